"""A PostgreSQL job database that stops answering (a network partition): requests
get 503 SERVICE_UNAVAILABLE within the command timeout instead of hanging, the
answer names no host or port, and the server serves again once the network is
back. The partition is a TCP proxy between the server and PostgreSQL that stops
forwarding (connections stay open; nothing arrives).
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sklearn.datasets import load_digits
from sqlalchemy.engine import make_url

from modelplex.server import start
from tests.conftest import settings_for, wait_ready
from tests.databases import truncate

DIGIT = load_digits(return_X_y=True)[0][0].tolist()
TIMEOUT_S = 1.0


class Partition:
    """A TCP proxy to `target` whose traffic can be stopped and resumed."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.flowing = threading.Event()
        self.flowing.set()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                self.flowing.wait()  # partitioned: hold the bytes, answer nothing
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                sock.close()

    def close(self) -> None:
        self._closed = True
        self.flowing.set()
        self._listener.close()


@pytest.fixture
def partition(postgres_url: str) -> Iterator[tuple[Partition, str]]:
    url = make_url(postgres_url)
    asyncio.run(truncate(postgres_url))
    proxy = Partition((url.host or "127.0.0.1", url.port or 5432))
    try:
        proxied = url.set(port=proxy.port).render_as_string(hide_password=False)
        yield proxy, proxied
    finally:
        proxy.close()


def test_a_partitioned_database_answers_503_without_its_address_then_recovers(
    partition: tuple[Partition, str], example_repo: Path, tmp_path: Path
) -> None:
    proxy, url = partition
    settings = settings_for(tmp_path, database_url=url, database_command_timeout_s=TIMEOUT_S)
    body = {"model": "digits", "input": {"instance": DIGIT}}
    with (
        start(settings, example_repo) as server,
        httpx.Client(base_url=server.url, timeout=20) as client,
    ):
        wait_ready(client)
        assert client.post("/v1/jobs", json=body).status_code == 202
        proxy.flowing.clear()
        # A hang would end in the client's own timeout (an error, failing the test).
        refused = client.post("/v1/jobs", json=body)
        assert refused.status_code == 503, refused.text
        problem = refused.json()
        assert problem["code"] == "SERVICE_UNAVAILABLE"
        assert refused.headers["retry-after"]
        for leak in (str(proxy.port), "127.0.0.1", "localhost", "postgres"):
            assert leak not in refused.text, leak
        assert client.get("/healthz").status_code == 200  # the server itself serves on
        proxy.flowing.set()

        def accepted() -> bool:
            return client.post("/v1/jobs", json=body).status_code == 202

        deadline = time.monotonic() + 30
        while not accepted():
            assert time.monotonic() < deadline, "the server never recovered"
            time.sleep(0.2)
