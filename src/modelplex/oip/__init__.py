"""The Open Inference Protocol (KServe V2 / Triton), protocol-neutral.

`service.V2Service` is what both the REST routes (`api/routes_v2.py`) and the
gRPC servicer (`grpc/servicer.py`) call: typed V2 requests in, typed V2
responses out, over the same data plane, batchers and error table as /v1.
"""
