"""The gRPC adapter's unit tests run in their own pytest process.

modelplex's generated protocol module and tritonclient's (which `tests/api`
imports) both define the protobuf package `inference`; one process can hold
only one of them. So the main run never collects `isolated/` (nothing here
imports `modelplex.grpc.protos`): `test_in_own_process.py` runs it in a fresh
interpreter. `pytest tests/grpc/isolated` runs it directly (an explicit path
is collected despite `collect_ignore`).
"""

collect_ignore = ["isolated"]
