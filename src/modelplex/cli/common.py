"""What every client command shares: the server URL option, a client that turns
a server's refusal into one line on stderr, and JSON on stdout."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Annotated, Any, NoReturn

import orjson
import typer

from modelplex.cli import inputs
from modelplex.client import ClientError, ModelplexClient

UrlOption = Annotated[
    str, typer.Option("--url", envvar="MODELPLEX_URL", help="Base URL of a running server.")
]


def fail(message: str) -> NoReturn:
    typer.secho(message, fg=typer.colors.RED, err=True)
    raise typer.Exit(1)


@contextmanager
def connect(url: str, options: Mapping[str, str] | None = None) -> Iterator[ModelplexClient]:
    """A client for one command; a server error ends the command with its message,
    naming the option where it names a request field that one of `options` sets."""
    with ModelplexClient(url) as client:
        try:
            yield client
        except ClientError as exc:
            if options and exc.detail is not None:
                fail(f"{exc.code}: {inputs.name_options(exc.detail, options)}")
            fail(str(exc))


def print_json(document: Any) -> None:
    typer.echo(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode())
