"""`modelplex batches ...`: a JSONL file of inputs as one batch."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer

from modelplex.cli.common import UrlOption, connect, fail, print_json
from modelplex.cli.output import stderr_progress
from modelplex.client import DEFAULT_URL, ModelplexClient

batches_app = typer.Typer(no_args_is_help=True, help="Batches of inputs from a JSONL file.")


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
        fail("give exactly one of --model or --pipeline")
    with connect(url) as client:
        options = {"top_k": top_k} if top_k else None
        batch = client.submit_batch(file, model=model, pipeline=pipeline, options=options)
        if wait:
            batch = _wait_for_batch(client, batch["id"])
    print_json(batch)
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
    with connect(url) as client:
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
    with connect(url) as client:
        print_json(client.get_batch(batch_id))


@batches_app.command("wait")
def batches_wait(batch_id: str, url: UrlOption = DEFAULT_URL) -> None:
    """Wait for a batch to finish, with a progress bar; exit 0 only if every line
    succeeded (3: some failed, 4: all failed, 5: cancelled)."""
    with connect(url) as client:
        batch = _wait_for_batch(client, batch_id)
    print_json(batch)
    _exit_as_batch(batch)


BATCH_EXIT_CODES = {"COMPLETED": 0, "PARTIALLY_FAILED": 3, "FAILED": 4, "CANCELLED": 5}
"""A finished batch's status as an exit code: 1 is any error and 2 a bad option or
file, as for every command, so a script can tell them from how the batch ended."""


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
    with connect(url) as client:
        for line in client.batch_lines(batch_id, errors=errors):
            typer.echo(orjson.dumps(line).decode())


@batches_app.command("cancel")
def batches_cancel(batch_id: str, url: UrlOption = DEFAULT_URL) -> None:
    """Cancel a batch's remaining chunks."""
    with connect(url) as client:
        print_json(client.cancel_batch(batch_id))


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
