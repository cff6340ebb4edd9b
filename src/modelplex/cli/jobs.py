"""`modelplex jobs ...`: submit, follow and fetch asynchronous jobs."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer

from modelplex.cli import inputs
from modelplex.cli.common import UrlOption, connect, fail, print_json
from modelplex.cli.output import stderr_progress
from modelplex.client import DEFAULT_URL, ModelplexClient

jobs_app = typer.Typer(no_args_is_help=True, help="Asynchronous jobs.")


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
    model_version: inputs.VersionOption = None,
    callback_url: inputs.CallbackUrlOption = None,
    callback_events: inputs.CallbackEventsOption = None,
    priority: Annotated[int, typer.Option(help="Higher runs first (-100..100).")] = 0,
    metadata: inputs.MetadataOption = None,
    idempotency_key: inputs.IdempotencyKeyOption = None,
    wait: Annotated[bool, typer.Option(help="Wait for the job, with a progress bar.")] = False,
    url: UrlOption = DEFAULT_URL,
) -> None:
    """Submit a job; print it (or, with --wait, its outcome).

    A model's FILE is read as predict's is; a pipeline's .json file is its input,
    any other file (a zip for album-tagging) is uploaded.
    """
    if (model is None) == (pipeline is None):
        fail("give exactly one of --model or --pipeline")
    events = inputs.events_option(callback_events)
    if events and callback_url is None:
        raise typer.BadParameter("needs --callback-url", param_hint="'--callback-events'")
    options: dict[str, Any] = {
        "version": model_version, "callback_url": callback_url, "callback_events": events,
        "priority": priority, "metadata": inputs.metadata_option(metadata),
        "idempotency_key": idempotency_key,
    }  # fmt: skip
    with connect(url, inputs.SUBMIT_FIELDS) as client:
        if model is not None:
            signature = client.get_model(model).get("inputs") or []
            body = inputs.read_model_input(file, model, signature).json_body()
            job = client.submit_job(model=model, input=body, **options)
        elif file.suffix.lower() == ".json":
            job = client.submit_job(pipeline=pipeline, input=inputs.read_json(file), **options)
        else:
            job = client.submit_job(pipeline=pipeline, file=file, **options)
        if wait:
            job = _wait_for_job(client, job["id"])
    print_json(job)
    if wait and job["status"] != "COMPLETED":
        raise typer.Exit(1)


@jobs_app.command("get")
def jobs_get(job_id: str, url: UrlOption = DEFAULT_URL) -> None:
    """Show a job: status, steps, result or error."""
    with connect(url) as client:
        print_json(client.get_job(job_id))


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
    with connect(url) as client:
        if output is None:
            print_json(client.job_result(job_id))
            return
        try:
            written = client.download_result(job_id, output)
        except OSError as exc:
            fail(f"cannot write {output}: {exc.strerror or exc}")
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
    with connect(url, inputs.LIST_FIELDS) as client:
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
    with connect(url) as client:
        print_json(client.cancel_job(job_id))


@jobs_app.command("wait")
def jobs_wait(job_id: str, url: UrlOption = DEFAULT_URL) -> None:
    """Wait for a job to finish, with a progress bar; exit 1 unless it COMPLETED."""
    with connect(url) as client:
        job = _wait_for_job(client, job_id)
    print_json(job)
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
