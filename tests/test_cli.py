"""The `modelplex` command as a user runs it: a real process, real sockets."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import modelplex

CLI = [sys.executable, "-m", "modelplex"]


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=60, env=env, check=False
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def served(example_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    workdir = tmp_path_factory.mktemp("cli")
    env = {
        **os.environ,
        "MODELPLEX_DATA_DIR": str(workdir / "data"),
        "MODELPLEX_GRPC_PORT": str(free_port()),
    }
    process = subprocess.Popen(
        [*CLI, "serve", "--port", str(port), "--model-repository", str(example_repo)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server did not become ready"
            time.sleep(0.1)
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
        if process.stderr:
            process.stderr.close()


def test_version() -> None:
    result = run_cli("version")
    assert result.returncode == 0
    assert result.stdout.strip() == modelplex.__version__


def test_models_list(served: str) -> None:
    result = run_cli("models", "list", "--url", served)
    assert result.returncode == 0, result.stderr
    lines = {line.split()[0]: line for line in result.stdout.splitlines()}
    assert "READY" in lines["digits"]
    assert "versions=1,2" in lines["digits"]
    assert "image-classifier" in lines


def test_predict_json_file(served: str, tmp_path: Path) -> None:
    from sklearn.datasets import load_digits

    features, labels = load_digits(return_X_y=True)
    instances = tmp_path / "digits.json"
    instances.write_text(json.dumps({"instances": features[1700:1705].tolist()}))
    result = run_cli("predict", "digits", str(instances), "--url", served)
    assert result.returncode == 0, result.stderr
    predictions = json.loads(result.stdout)["predictions"]
    assert len(predictions) == 5
    assert sum(p["class_id"] == y for p, y in zip(predictions, labels[1700:1705], strict=True)) >= 4


def test_predict_image_file(served: str, tmp_path: Path, photos: dict[str, bytes]) -> None:
    image = tmp_path / "coffee.png"
    image.write_bytes(photos["coffee.png"])
    result = run_cli("predict", "image-classifier", str(image), "--top-k", "3", "--url", served)
    assert result.returncode == 0, result.stderr
    prediction = json.loads(result.stdout)["predictions"][0]
    assert prediction["label"] == "espresso"
    assert len(prediction["top_k"]) == 3


def test_errors_are_reported_not_raised(served: str, tmp_path: Path) -> None:
    instances = tmp_path / "bad.json"
    instances.write_text("[1, 2, 3]")
    result = run_cli("predict", "digits", str(instances), "--url", served)
    assert result.returncode == 1
    assert "INVALID_INPUT" in result.stderr
    assert "Traceback" not in result.stderr
    unknown = run_cli("predict", "nope", str(instances), "--url", served)
    assert "MODEL_NOT_FOUND" in unknown.stderr


def test_unreachable_server() -> None:
    result = run_cli("models", "list", "--url", f"http://127.0.0.1:{free_port()}")
    assert result.returncode == 1
    assert "cannot reach" in result.stderr


def test_serve_refuses_a_missing_repository(tmp_path: Path) -> None:
    result = run_cli("serve", "--port", "0", "--model-repository", str(tmp_path / "absent"))
    assert result.returncode == 1
    assert "is not a directory" in result.stderr


def test_jobs_submit_wait_list_and_get(served: str, tmp_path: Path) -> None:
    """`modelplex serve` runs its own worker (embedded mode): a job completes."""
    from sklearn.datasets import load_digits

    features = load_digits(return_X_y=True)[0]
    body = tmp_path / "body.json"
    body.write_text(json.dumps({"instances": features[:3].tolist()}))
    result = run_cli("jobs", "submit", str(body), "--model", "digits", "--wait", "--url", served)
    assert result.returncode == 0, result.stderr
    job = json.loads(result.stdout)
    assert job["status"] == "COMPLETED"
    assert len(job["result"]["predictions"]) == 3
    listed = run_cli("jobs", "list", "--model", "digits", "--url", served)
    assert job["id"] in listed.stdout
    fetched = run_cli("jobs", "get", job["id"], "--url", served)
    assert json.loads(fetched.stdout)["id"] == job["id"]
    missing = run_cli("jobs", "get", "job_missing", "--url", served)
    assert missing.returncode == 1
    assert "JOB_NOT_FOUND" in missing.stderr


def test_batches_submit_and_results(served: str, tmp_path: Path) -> None:
    from sklearn.datasets import load_digits

    features = load_digits(return_X_y=True)[0]
    rows = tmp_path / "rows.jsonl"
    lines = [json.dumps({"custom_id": f"r{i}", "input": features[i].tolist()}) for i in range(4)]
    rows.write_text("\n".join([*lines, "not json"]) + "\n")
    submitted = run_cli(
        "batches", "submit", str(rows), "--model", "digits", "--wait", "--url", served
    )
    assert submitted.returncode == 2, submitted.stderr  # one line of five failed
    batch = json.loads(submitted.stdout)
    assert batch["status"] == "PARTIALLY_FAILED"
    assert batch["counts"]["completed"] == 4
    assert batch["counts"]["failed"] == 1
    results = run_cli("batches", "results", batch["id"], "--url", served)
    assert sorted(json.loads(line)["custom_id"] for line in results.stdout.splitlines()) == [
        "r0", "r1", "r2", "r3",
    ]  # fmt: skip
    errors = run_cli("batches", "results", batch["id"], "--errors", "--url", served)
    assert json.loads(errors.stdout.splitlines()[0])["error"]["code"] == "INVALID_INPUT"


@pytest.mark.parametrize(
    ("good", "bad", "status", "code"),
    [(3, 0, "COMPLETED", 0), (2, 1, "PARTIALLY_FAILED", 2), (0, 3, "FAILED", 3)],
)
def test_batches_wait_exits_by_how_the_lines_ended(
    served: str, tmp_path: Path, good: int, bad: int, status: str, code: int
) -> None:
    """Lines the model refuses when their chunk runs (not at submission) fail too."""
    from sklearn.datasets import load_digits

    features = load_digits(return_X_y=True)[0]
    rows = tmp_path / "rows.jsonl"
    lines = [{"custom_id": f"ok{i}", "input": features[i].tolist()} for i in range(good)]
    lines += [{"custom_id": f"bad{i}", "input": [1, 2, 3]} for i in range(bad)]
    rows.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    submitted = run_cli("batches", "submit", str(rows), "--model", "digits", "--url", served)
    assert submitted.returncode == 0, submitted.stderr
    batch_id = json.loads(submitted.stdout)["id"]
    waited = run_cli("batches", "wait", batch_id, "--url", served)
    assert waited.returncode == code, waited.stderr
    batch = json.loads(waited.stdout)
    assert batch["status"] == status
    assert (batch["counts"]["completed"], batch["counts"]["failed"]) == (good, bad)


def test_batches_list(served: str, tmp_path: Path) -> None:
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"custom_id": "r", "input": [0.0] * 64}) + "\n")
    submitted = run_cli(
        "batches", "submit", str(rows), "--model", "digits", "--wait", "--url", served
    )
    assert submitted.returncode == 0, submitted.stderr
    batch_id = json.loads(submitted.stdout)["id"]
    listed = run_cli("batches", "list", "--model", "digits", "--url", served)
    assert listed.returncode == 0, listed.stderr
    line = next(line for line in listed.stdout.splitlines() if line.startswith(batch_id))
    assert "COMPLETED" in line
    assert "1/1 done" in line
    other = run_cli("batches", "list", "--status", "FAILED", "--url", served)
    assert batch_id not in other.stdout
    bad = run_cli("batches", "list", "--status", "DONE", "--url", served)
    assert bad.returncode == 1
    assert "INVALID_INPUT" in bad.stderr
