"""The `modelplex` command line."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn

import orjson
import typer

import modelplex
from modelplex import cli_inputs
from modelplex.cli_output import stderr_progress, stdout_to_stderr
from modelplex.client import DEFAULT_URL, ClientError, ModelplexClient
from modelplex.settings import Settings

app = typer.Typer(no_args_is_help=True, add_completion=False, help="modelplex model server.")
models_app = typer.Typer(no_args_is_help=True, help="Inspect the models a server serves.")
examples_app = typer.Typer(no_args_is_help=True, help="The example model repository.")
jobs_app = typer.Typer(no_args_is_help=True, help="Asynchronous jobs.")
batches_app = typer.Typer(no_args_is_help=True, help="Batches of inputs from a JSONL file.")
app.add_typer(models_app, name="models")
app.add_typer(examples_app, name="examples")
app.add_typer(jobs_app, name="jobs")
app.add_typer(batches_app, name="batches")

UrlOption = Annotated[
    str, typer.Option("--url", envvar="MODELPLEX_URL", help="Base URL of a running server.")
]


def _show_version(value: bool) -> None:
    if value:
        typer.echo(modelplex.__version__)
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_show_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """modelplex model server."""


def _settings(**overrides: Any) -> Settings:
    """The settings, or exit 2 with one line per problem (where, key, what was expected)."""
    from modelplex.config_errors import load_settings
    from modelplex.errors import ConfigurationError

    try:
        return load_settings(**overrides)
    except ConfigurationError as exc:
        typer.secho(str(exc), fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None


def _fail(message: str) -> NoReturn:
    typer.secho(message, fg=typer.colors.RED, err=True)
    raise typer.Exit(1)


@contextmanager
def _client(url: str, options: Mapping[str, str] | None = None) -> Iterator[ModelplexClient]:
    """A client for one command; a server error ends the command with its message,
    naming the option where it names a request field that one of `options` sets."""
    with ModelplexClient(url) as client:
        try:
            yield client
        except ClientError as exc:
            if options and exc.detail is not None:
                _fail(f"{exc.code}: {cli_inputs.name_options(exc.detail, options)}")
            _fail(str(exc))


def _print(document: Any) -> None:
    typer.echo(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode())


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Interface to bind (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default 8000).")] = None,
    grpc_port: Annotated[int | None, typer.Option(help="gRPC port (default 8001).")] = None,
    workers: Annotated[
        int | None, typer.Option(help="Worker processes to run jobs (default 1; 0: none).")
    ] = None,
    data_dir: Annotated[
        Path | None, typer.Option(help="Runtime state: job database, blobs (default .modelplex).")
    ] = None,
    model_repository: Annotated[
        Path | None, typer.Option(help="Model repository (default: the example models).")
    ] = None,
    config: Annotated[Path | None, typer.Option(help="TOML settings file.")] = None,
) -> None:
    """Serve a model repository over HTTP and gRPC (the example models by default)."""
    from modelplex.errors import ModelplexError
    from modelplex.process import configure_logging
    from modelplex.server import serve as run_server

    settings = _settings(
        host=host, port=port, grpc_port=grpc_port, workers=workers, data_dir=data_dir,
        model_repository=model_repository, config_file=config,
    )  # fmt: skip
    configure_logging(settings.log_level)
    try:
        run_server(settings)
    except ModelplexError as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(f"cannot serve on {settings.host}:{settings.port}: {exc}")


@app.command()
def worker(
    model_repository: Annotated[
        Path | None, typer.Option(help="Model repository (default: the example models).")
    ] = None,
    concurrency: Annotated[int | None, typer.Option(help="Jobs run at a time.")] = None,
    config: Annotated[Path | None, typer.Option(help="TOML settings file.")] = None,
) -> None:
    """Run jobs from the job database (MODELPLEX_DATABASE_URL) until SIGTERM."""
    from modelplex.errors import ModelplexError
    from modelplex.process import configure_logging
    from modelplex.server import resolve_repository, run_worker

    settings = _settings(
        model_repository=model_repository, worker_concurrency=concurrency, config_file=config
    )
    configure_logging(settings.log_level)
    try:
        run_worker(settings, resolve_repository(settings))
    except ModelplexError as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(f"worker failed: {exc}")


@app.command()
def version() -> None:
    """Print modelplex's version."""
    typer.echo(modelplex.__version__)


@models_app.command("list")
def models_list(url: UrlOption = DEFAULT_URL) -> None:
    """List the models a server serves, with their state and versions."""
    with _client(url) as client:
        models = client.list_models()
    for model in models:
        line = (
            f"{model['name']:<24} {model['state']:<8} default={model['default_version']} "
            f"versions={','.join(model['versions'])}"
        )
        if model.get("reason"):
            line += f"  ({model['reason']})"
        typer.echo(line)


@models_app.command("get")
def models_get(model: str, url: UrlOption = DEFAULT_URL) -> None:
    """Show one model: signature, labels count, batching, versions and stats."""
    with _client(url) as client:
        document = client.get_model(model)
    if document.get("labels"):
        document["labels"] = f"{len(document['labels'])} labels"
    _print(document)


@app.command()
def predict(
    model: str,
    file: Annotated[
        Path,
        typer.Argument(exists=True, dir_okay=False, help="A JSON input, or an image file."),
    ],
    model_version: Annotated[str | None, typer.Option("--version", help="Model version.")] = None,
    top_k: Annotated[int | None, typer.Option(min=1, help="Classes per instance.")] = None,
    detail: Annotated[str, typer.Option(help="minimal, standard or verbose.")] = "standard",
    url: UrlOption = DEFAULT_URL,
) -> None:
    """Send FILE to MODEL and print the result.

    A .json file holds one instance, a list of instances, or a request body
    ({"instance": ...} or {"instances": [...]}, with its parameters); any other
    file (an image) goes to the model's one BYTES input.
    """
    with _client(url) as client:
        info = client.get_model(model)
        given = cli_inputs.read_model_input(file, model, info.get("inputs") or [])
        if given.file is not None and given.input_name is not None:
            result = client.predict_files(
                model, given.input_name, [given.file], version=model_version, top_k=top_k,
                detail=detail,
            )  # fmt: skip
        else:
            body = given.json_body(top_k)
            result = client.predict_body(model, body, version=model_version, detail=detail)
    _print(result)


@jobs_app.command("submit")
def jobs_submit(
    file: Annotated[
        Path,
        typer.Argument(
            exists=True, dir_okay=False, help="As predict's FILE; for a pipeline, any file."
        ),
    ],
    model: Annotated[str | None, typer.Option(help="Run this model.")] = None,
    pipeline: Annotated[str | None, typer.Option(help="Run this pipeline.")] = None,
    model_version: cli_inputs.VersionOption = None,
    callback_url: cli_inputs.CallbackUrlOption = None,
    callback_events: cli_inputs.CallbackEventsOption = None,
    priority: Annotated[int, typer.Option(help="Higher runs first (-100..100).")] = 0,
    metadata: cli_inputs.MetadataOption = None,
    idempotency_key: cli_inputs.IdempotencyKeyOption = None,
    wait: Annotated[bool, typer.Option(help="Wait for the job, with a progress bar.")] = False,
    url: UrlOption = DEFAULT_URL,
) -> None:
    """Submit a job; print it (or, with --wait, its outcome).

    A model's FILE is read as predict's is; a pipeline's .json file is its input,
    any other file (a zip for album-tagging) is uploaded.
    """
    if (model is None) == (pipeline is None):
        _fail("give exactly one of --model or --pipeline")
    events = cli_inputs.events_option(callback_events)
    if events and callback_url is None:
        raise typer.BadParameter("needs --callback-url", param_hint="'--callback-events'")
    options: dict[str, Any] = {
        "version": model_version, "callback_url": callback_url, "callback_events": events,
        "priority": priority, "metadata": cli_inputs.metadata_option(metadata),
        "idempotency_key": idempotency_key,
    }  # fmt: skip
    with _client(url, cli_inputs.SUBMIT_FIELDS) as client:
        if model is not None:
            inputs = client.get_model(model).get("inputs") or []
            body = cli_inputs.read_model_input(file, model, inputs).json_body()
            job = client.submit_job(model=model, input=body, **options)
        elif file.suffix.lower() == ".json":
            job = client.submit_job(pipeline=pipeline, input=cli_inputs.read_json(file), **options)
        else:
            job = client.submit_job(pipeline=pipeline, file=file, **options)
        if wait:
            job = _wait_for_job(client, job["id"])
    _print(job)
    if wait and job["status"] != "COMPLETED":
        raise typer.Exit(1)


@jobs_app.command("get")
def jobs_get(job_id: str, url: UrlOption = DEFAULT_URL) -> None:
    """Show a job: status, steps, result or error."""
    with _client(url) as client:
        _print(client.get_job(job_id))


@jobs_app.command("result")
def jobs_result(
    job_id: str,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", dir_okay=False, help="Write the result to this file."),
    ] = None,
    url: UrlOption = DEFAULT_URL,
) -> None:
    """Print a completed job's result (JSON), or write it to FILE with -o, however large."""
    with _client(url) as client:
        if output is None:
            _print(client.job_result(job_id))
            return
        try:
            written = client.download_result(job_id, output)
        except OSError as exc:
            _fail(f"cannot write {output}: {exc.strerror or exc}")
    typer.echo(f"wrote {written} bytes to {output}", err=True)


@jobs_app.command("list")
def jobs_list(
    status: Annotated[str | None, typer.Option(help="Only jobs in this status.")] = None,
    model: Annotated[str | None, typer.Option(help="Only jobs of this model or pipeline.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=500)] = 20,
    cursor: Annotated[str | None, typer.Option(help="next_cursor from the previous page.")] = None,
    url: UrlOption = DEFAULT_URL,
) -> None:
    """List jobs, newest first (the next page's option on stderr)."""
    with _client(url, cli_inputs.LIST_FIELDS) as client:
        page = client.list_jobs(status=status, model=model, limit=limit, cursor=cursor)
    for job in page["jobs"]:
        target = job.get("model") or job.get("pipeline") or job.get("batch_chunk")
        typer.echo(
            f"{job['id']}  {job['status']:<10} {target:<20} {job['progress'] * 100:5.1f}%  "
            f"{job['created_at']}"
        )
    if page["next_cursor"]:
        typer.echo(f"next page: --cursor {page['next_cursor']}", err=True)


@jobs_app.command("cancel")
def jobs_cancel(job_id: str, url: UrlOption = DEFAULT_URL) -> None:
    """Cancel a job (a running one stops at its next step boundary)."""
    with _client(url) as client:
        _print(client.cancel_job(job_id))


@jobs_app.command("wait")
def jobs_wait(job_id: str, url: UrlOption = DEFAULT_URL) -> None:
    """Wait for a job to finish, with a progress bar; exit 1 unless it COMPLETED."""
    with _client(url) as client:
        job = _wait_for_job(client, job_id)
    _print(job)
    if job["status"] != "COMPLETED":
        raise typer.Exit(1)


def _wait_for_job(client: ModelplexClient, job_id: str) -> dict[str, Any]:
    with stderr_progress() as bar:
        task = bar.add_task(job_id, total=1.0)
        while True:
            job = client.get_job(job_id)
            running = [s["name"] for s in job["steps"] if s["status"] == "RUNNING"]
            label = f"{job['status']} {running[0] if running else ''}".strip()
            bar.update(task, completed=job["progress"], description=label)
            if job["status"] in ("COMPLETED", "FAILED", "CANCELLED"):
                return job
            time.sleep(0.5)


@batches_app.command("submit")
def batches_submit(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="JSONL file.")],
    model: Annotated[str | None, typer.Option(help="Run this model.")] = None,
    pipeline: Annotated[str | None, typer.Option(help="Run this pipeline.")] = None,
    top_k: Annotated[int | None, typer.Option(min=1, help="Classes per line.")] = None,
    wait: Annotated[
        bool, typer.Option(help="Wait, with a progress bar; exit as `batches wait` does.")
    ] = False,
    url: UrlOption = DEFAULT_URL,
) -> None:
    """Submit a JSONL file ({"custom_id": ..., "input": ...} per line)."""
    if (model is None) == (pipeline is None):
        _fail("give exactly one of --model or --pipeline")
    with _client(url) as client:
        options = {"top_k": top_k} if top_k else None
        batch = client.submit_batch(file, model=model, pipeline=pipeline, options=options)
        if wait:
            batch = _wait_for_batch(client, batch["id"])
    _print(batch)
    if wait:
        _exit_as_batch(batch)


@batches_app.command("list")
def batches_list(
    status: Annotated[str | None, typer.Option(help="Only batches in this status.")] = None,
    model: Annotated[
        str | None, typer.Option(help="Only batches of this model or pipeline.")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=500)] = 20,
    cursor: Annotated[str | None, typer.Option(help="next_cursor from the previous page.")] = None,
    url: UrlOption = DEFAULT_URL,
) -> None:
    """List batches, newest first."""
    with _client(url) as client:
        page = client.list_batches(status=status, model=model, limit=limit, cursor=cursor)
    for batch in page["batches"]:
        target = batch.get("model") or batch.get("pipeline")
        counts = batch["counts"]
        typer.echo(
            f"{batch['id']}  {batch['status']:<16} {target:<20} {counts['completed']}/"
            f"{counts['total']} done, {counts['failed']} failed  {batch['created_at']}"
        )
    if page["next_cursor"]:
        typer.echo(f"next page: --cursor {page['next_cursor']}", err=True)


@batches_app.command("get")
def batches_get(batch_id: str, url: UrlOption = DEFAULT_URL) -> None:
    """Show a batch's counts and progress."""
    with _client(url) as client:
        _print(client.get_batch(batch_id))


@batches_app.command("wait")
def batches_wait(batch_id: str, url: UrlOption = DEFAULT_URL) -> None:
    """Wait for a batch to finish, with a progress bar; exit 0 only if every line
    succeeded (2: some failed, 3: all failed, 4: cancelled)."""
    with _client(url) as client:
        batch = _wait_for_batch(client, batch_id)
    _print(batch)
    _exit_as_batch(batch)


BATCH_EXIT_CODES = {"COMPLETED": 0, "PARTIALLY_FAILED": 2, "FAILED": 3, "CANCELLED": 4}
"""A finished batch's status as an exit code (1 is any error, as for every command)."""


def _exit_as_batch(batch: dict[str, Any]) -> None:
    code = BATCH_EXIT_CODES.get(batch["status"], 1)
    if code:
        raise typer.Exit(code)


@batches_app.command("results")
def batches_results(
    batch_id: str,
    errors: Annotated[bool, typer.Option("--errors", help="The failed lines instead.")] = False,
    url: UrlOption = DEFAULT_URL,
) -> None:
    """Print the batch's results (or errors) as JSONL."""
    with _client(url) as client:
        for line in client.batch_lines(batch_id, errors=errors):
            typer.echo(orjson.dumps(line).decode())


@batches_app.command("cancel")
def batches_cancel(batch_id: str, url: UrlOption = DEFAULT_URL) -> None:
    """Cancel a batch's remaining chunks."""
    with _client(url) as client:
        _print(client.cancel_batch(batch_id))


def _wait_for_batch(client: ModelplexClient, batch_id: str) -> dict[str, Any]:
    with stderr_progress() as bar:
        task = bar.add_task(batch_id, total=1.0)
        while True:
            batch = client.get_batch(batch_id)
            counts = batch["counts"]
            bar.update(
                task,
                completed=batch["progress"],
                description=f"{counts['completed']} done, {counts['failed']} failed "
                f"of {counts['total']}",
            )
            if batch["finished_at"]:
                return batch
            time.sleep(0.5)


@examples_app.command("build")
def examples_build(
    cache_dir: Annotated[Path | None, typer.Option(help="Cache directory.")] = None,
) -> None:
    """Build the example model repository (needs the 'examples' extra) and print its path."""
    from modelplex.errors import ModelplexError
    from modelplex.examples import ensure_example_repository
    from modelplex.process import configure_logging

    settings = _settings(cache_dir=cache_dir)
    configure_logging(settings.log_level)
    try:
        # The builders' libraries print as they load weights: stdout is the path's alone.
        with stdout_to_stderr():
            path = ensure_example_repository(settings.cache_dir)
    except ModelplexError as exc:
        _fail(str(exc))
    typer.echo(str(path))


def main() -> None:
    app(prog_name="modelplex")


if __name__ == "__main__":
    main()
