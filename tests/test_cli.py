"""The `modelplex` command as a user runs it: a real process, real sockets."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import modelplex
from tests.helpers import write_python_model

CLI = [sys.executable, "-m", "modelplex"]


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=60, env=env, check=False
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def serving(args: list[str], env: dict[str, str], log: Path) -> Iterator[str]:
    """`modelplex serve ARGS` on a free port until it is ready, its stderr in `log`;
    SIGTERM when done."""
    port = free_port()
    with log.open("wb") as stderr:
        process = subprocess.Popen(
            [*CLI, "serve", "--port", str(port), *args], env=env, stdout=subprocess.DEVNULL,
            stderr=stderr,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, log.read_text()
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


@pytest.fixture(scope="module")
def served(example_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    workdir = tmp_path_factory.mktemp("cli")
    env = {
        **os.environ,
        # results over 4 KiB live in the blob store (`jobs result` downloads them)
        "MODELPLEX_BLOB_THRESHOLD_BYTES": "4096",
        "MODELPLEX_WEBHOOK_ALLOW_PRIVATE": "true",
    }
    args = ["--model-repository", str(example_repo), "--data-dir", str(workdir / "data")]
    with serving([*args, "--grpc-port", str(free_port())], env, workdir / "serve.log") as url:
        yield url


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
    assert submitted.returncode == 3, submitted.stderr  # one line of five failed
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


# -- one consistent tool --------------------------------------------------------
def test_version_option() -> None:
    result = run_cli("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{modelplex.__version__}\n"


def test_serve_takes_its_ports_workers_and_directories(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    write_python_model(repo, "doubler")
    grpc_port, data_dir, log = free_port(), tmp_path / "state", tmp_path / "serve.log"
    args = ["--grpc-port", str(grpc_port), "--workers", "2", "--data-dir", str(data_dir)]
    with serving([*args, "--model-repository", str(repo)], dict(os.environ), log) as url:
        assert httpx.get(f"{url}/v1/models/doubler", timeout=5).status_code == 200
        with socket.create_connection(("127.0.0.1", grpc_port), timeout=5):
            pass
        assert (data_dir / "modelplex.db").is_file()
        deadline = time.monotonic() + 30
        while "worker process 1 started" not in log.read_text():
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        assert "worker process 2 started" not in log.read_text()


def _digits_job(served: str, tmp_path: Path, count: int) -> dict[str, Any]:
    from sklearn.datasets import load_digits

    body = tmp_path / "body.json"
    body.write_text(json.dumps({"instances": load_digits().data[:count].tolist()}))
    result = run_cli("jobs", "submit", str(body), "--model", "digits", "--wait", "--url", served)
    assert result.returncode == 0, result.stderr
    job: dict[str, Any] = json.loads(result.stdout)
    return job


def test_jobs_result_downloads_a_result_stored_as_a_blob(served: str, tmp_path: Path) -> None:
    job = _digits_job(served, tmp_path, 200)
    assert job["result"] is None
    assert job["result_in_blob"] is True
    target = tmp_path / "result.json"
    written = run_cli("jobs", "result", job["id"], "-o", str(target), "--url", served)
    assert written.returncode == 0, written.stderr
    assert written.stdout == ""
    assert target.read_bytes() == httpx.get(f"{served}/v1/jobs/{job['id']}/result").content
    assert len(json.loads(target.read_bytes())["predictions"]) == 200
    printed = run_cli("jobs", "result", job["id"], "--url", served)
    assert printed.returncode == 0, printed.stderr
    assert json.loads(printed.stdout) == json.loads(target.read_bytes())


def test_jobs_result_of_an_inline_result_and_of_a_missing_job(served: str, tmp_path: Path) -> None:
    job = _digits_job(served, tmp_path, 2)
    printed = run_cli("jobs", "result", job["id"], "--url", served)
    assert json.loads(printed.stdout) == job["result"]
    missing = run_cli("jobs", "result", "job_missing", "-o", str(tmp_path / "x"), "--url", served)
    assert missing.returncode == 1
    assert "JOB_NOT_FOUND" in missing.stderr
    assert not (tmp_path / "x").exists()
    nowhere = str(tmp_path / "no" / "x")
    unwritable = run_cli("jobs", "result", job["id"], "-o", nowhere, "--url", served)
    assert unwritable.returncode == 1
    assert "cannot write" in unwritable.stderr


def test_jobs_submit_version_metadata_and_callback_events(
    served: str, tmp_path: Path, photos: dict[str, bytes]
) -> None:
    hook = f"http://127.0.0.1:{free_port()}/hook"  # nobody listens: deliveries just fail
    body = tmp_path / "body.json"
    body.write_text(json.dumps([0.0] * 64))
    options = [
        "--metadata", "team=vision", "--metadata", '{"run": 3, "tags": ["a"]}',
        "--callback-url", hook, "--callback-events", "job.step", "--url", served,
    ]  # fmt: skip
    model_job = run_cli(
        "jobs", "submit", str(body), "--model", "digits", "--version", "1", "--wait", *options
    )
    assert model_job.returncode == 0, model_job.stderr
    job = json.loads(model_job.stdout)
    assert job["version"] == "1"
    assert job["result"]["model"]["version"] == "1"
    assert job["metadata"] == {"team": "vision", "run": 3, "tags": ["a"]}
    assert (job["callback_url"], job["callback_events"]) == (hook, ["job.step"])
    # an uploaded file carries the same options as form fields
    album = tmp_path / "album.zip"
    with zipfile.ZipFile(album, "w") as archive:
        archive.writestr("coffee.png", photos["coffee.png"])
    uploaded = run_cli("jobs", "submit", str(album), "--pipeline", "album-tagging", *options)
    assert uploaded.returncode == 0, uploaded.stderr
    job = json.loads(uploaded.stdout)
    assert job["metadata"] == {"team": "vision", "run": 3, "tags": ["a"]}
    assert job["callback_events"] == ["job.step"]


@pytest.mark.parametrize("form", ["bare instance", "instance body", "instances body", "image"])
def test_predict_and_jobs_submit_read_the_same_files(
    served: str, tmp_path: Path, photos: dict[str, bytes], form: str
) -> None:
    from sklearn.datasets import load_digits

    features = load_digits().data
    model, file = "digits", tmp_path / "input.json"
    if form == "bare instance":
        file.write_text(json.dumps(features[0].tolist()))
    elif form == "instance body":
        file.write_text(json.dumps({"instance": features[0].tolist()}))
    elif form == "instances body":  # its parameters are kept
        body = {"instances": features[:2].tolist(), "parameters": {"top_k": 2}}
        file.write_text(json.dumps(body))
    else:
        model, file = "image-classifier", tmp_path / "coffee.png"
        file.write_bytes(photos["coffee.png"])
    predicted = run_cli("predict", model, str(file), "--url", served)
    assert predicted.returncode == 0, predicted.stderr
    submitted = run_cli("jobs", "submit", str(file), "--model", model, "--wait", "--url", served)
    assert submitted.returncode == 0, submitted.stderr
    predictions = json.loads(predicted.stdout)["predictions"]
    assert json.loads(submitted.stdout)["result"]["predictions"] == predictions
    assert len(predictions) == (2 if form == "instances body" else 1)
    if form == "instances body":
        assert all(len(p["top_k"]) == 2 for p in predictions)
    if form == "image":
        assert predictions[0]["label"] == "espresso"


def test_a_file_for_a_model_without_a_bytes_input_names_the_argument(
    served: str, tmp_path: Path
) -> None:
    image = tmp_path / "photo.png"
    image.write_bytes(b"not json")
    for command in (["predict", "digits"], ["jobs", "submit", "--model", "digits"]):
        result = run_cli(*command, str(image), "--url", served)
        assert result.returncode == 2
        assert "'FILE'" in result.stderr
        assert "pixels (FP32)" in result.stderr


def _run_on_a_terminal(args: list[str], stream: str) -> tuple[str, str]:
    """The CLI with `stream` (stdout or stderr) on a pseudo-terminal: what the
    terminal showed, and what the other stream's pipe got."""
    controller, terminal = pty.openpty()
    pipes: dict[str, Any] = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, stream: terminal}
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "120"}
    process = subprocess.Popen([*CLI, *args], env=env, **pipes)
    os.close(terminal)
    shown: list[bytes] = []

    def read_terminal() -> None:
        with contextlib.suppress(OSError):  # EIO once the process closed its end
            while chunk := os.read(controller, 65536):
                shown.append(chunk)

    reader = threading.Thread(target=read_terminal, name="pty-reader")
    reader.start()
    out, err = process.communicate(timeout=60)
    reader.join(timeout=10)
    os.close(controller)
    piped = out if stream == "stderr" else err
    return b"".join(shown).decode(errors="replace").replace("\r\n", "\n"), piped.decode()


def test_wait_prints_the_job_on_stdout_and_draws_progress_on_a_terminal_stderr(
    served: str, tmp_path: Path
) -> None:
    body = tmp_path / "body.json"
    body.write_text(json.dumps({"instance": [0.0] * 64}))
    submit = ["jobs", "submit", str(body), "--model", "digits", "--wait", "--url", served]
    terminal, stdout = _run_on_a_terminal(submit, "stderr")
    job = json.loads(stdout)
    assert job["status"] == "COMPLETED"
    assert "%" in terminal  # the progress bar, on stderr
    terminal, stderr = _run_on_a_terminal(["jobs", "wait", job["id"], "--url", served], "stdout")
    assert json.loads(terminal) == job
    assert stderr == ""  # not a terminal: no bar
    piped = run_cli("jobs", "wait", job["id"], "--url", served)
    assert json.loads(piped.stdout) == job
    assert piped.stderr == ""
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"custom_id": "a", "input": [0.0] * 64}) + "\n")
    batch = ["batches", "submit", str(rows), "--model", "digits", "--wait", "--url", served]
    terminal, stderr = _run_on_a_terminal(batch, "stdout")
    assert json.loads(terminal)["counts"]["completed"] == 1
    assert stderr == ""


def test_examples_build_prints_only_the_path(tmp_path: Path) -> None:
    result = run_cli("examples", "build", "--cache-dir", str(tmp_path / "cache"))
    assert result.returncode == 0, result.stderr
    path = Path(result.stdout.removesuffix("\n"))
    assert result.stdout == f"{path}\n"
    assert (path / "image-classifier" / "model.toml").is_file()


def test_option_errors_name_the_option(served: str, tmp_path: Path) -> None:
    body = tmp_path / "body.json"
    body.write_text(json.dumps({"instance": [0.0] * 64}))
    submit = ["jobs", "submit", str(body), "--model", "digits", "--url", served]
    for option, value in [
        ("--idempotency-key", "clé"),
        ("--idempotency-key", "k" * 201),
        ("--callback-url", "not a url"),
        ("--metadata", "no-equals-sign"),
    ]:
        result = run_cli(*submit, option, value)
        assert result.returncode == 2, (option, value, result.stderr)
        assert option in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
        assert "Idempotency-Key" not in result.stderr
    hook = ["--callback-url", f"http://127.0.0.1:{free_port()}/hook"]
    for option, value in [("--callback-events", "job.bogus"), ("--priority", "1000")]:
        result = run_cli(*submit, *hook, option, value)
        assert result.returncode == 1, result.stderr
        assert result.stderr.startswith(f"INVALID_INPUT: {option}: "), result.stderr
    key = ["--idempotency-key", f"key-{time.time_ns()}"]
    assert run_cli(*submit, *key).returncode == 0
    conflict = run_cli(*submit, *key, "--priority", "5")
    assert conflict.returncode == 1
    assert conflict.stderr.startswith("IDEMPOTENCY_CONFLICT: --idempotency-key: "), conflict.stderr
    listed = run_cli("jobs", "list", "--status", "DONE", "--url", served)
    assert listed.returncode == 1
    assert listed.stderr.startswith("INVALID_INPUT: --status: "), listed.stderr


def test_jobs_list_prints_jobs_alone_on_stdout(served: str, tmp_path: Path) -> None:
    first, second = _digits_job(served, tmp_path, 1), _digits_job(served, tmp_path, 1)
    listed = run_cli("jobs", "list", "--limit", "1", "--url", served)
    assert listed.returncode == 0, listed.stderr
    assert [line.split()[0] for line in listed.stdout.splitlines()] == [second["id"]]
    hint, cursor = listed.stderr.rsplit(" ", 1)
    assert hint == "next page: --cursor"
    rest = run_cli("jobs", "list", "--limit", "1", "--cursor", cursor.strip(), "--url", served)
    assert rest.stdout.split()[0] == first["id"]


def test_every_command_and_option_is_in_the_cli_page() -> None:
    import click
    import typer

    from modelplex.cli import app

    page = (Path(__file__).resolve().parent.parent / "docs" / "6-cli.md").read_text()

    def commands(command: click.Command, path: str) -> Iterator[tuple[str, click.Command]]:
        yield path, command
        if isinstance(command, click.Group):
            for name, sub in command.commands.items():
                yield from commands(sub, f"{path} {name}".strip())

    for path, command in commands(typer.main.get_command(app), ""):
        assert f"{path}" in page, path
        for param in command.params:
            names = param.opts if isinstance(param, click.Option) else []
            for name in (n for n in names if n != "--help"):
                assert re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", page), (path, name)


@pytest.mark.parametrize(
    ("good", "bad", "status", "code"),
    [(3, 0, "COMPLETED", 0), (2, 1, "PARTIALLY_FAILED", 3), (0, 3, "FAILED", 4)],
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
