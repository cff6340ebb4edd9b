"""The `modelplex` command line: serving commands here, client command groups in
this package's modules (`jobs`, `batches`, `keys`), their shared parts in `common`,
`inputs` and `output`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

import modelplex
from modelplex.cli import inputs
from modelplex.cli.batches import batches_app
from modelplex.cli.common import UrlOption, connect, fail, print_json
from modelplex.cli.jobs import jobs_app
from modelplex.cli.keys import keys_app
from modelplex.cli.output import stdout_to_stderr
from modelplex.client import DEFAULT_URL
from modelplex.settings import Settings

app = typer.Typer(no_args_is_help=True, add_completion=False, help="modelplex model server.")
models_app = typer.Typer(no_args_is_help=True, help="Inspect the models a server serves.")
examples_app = typer.Typer(no_args_is_help=True, help="The example model repository.")
app.add_typer(models_app, name="models")
app.add_typer(examples_app, name="examples")
app.add_typer(jobs_app, name="jobs")
app.add_typer(batches_app, name="batches")
app.add_typer(keys_app, name="keys")


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
        fail(str(exc))
    except OSError as exc:
        fail(f"cannot serve on {settings.host}:{settings.port}: {exc}")


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
        fail(str(exc))
    except OSError as exc:
        fail(f"worker failed: {exc}")


@app.command()
def version() -> None:
    """Print modelplex's version."""
    typer.echo(modelplex.__version__)


@models_app.command("list")
def models_list(url: UrlOption = DEFAULT_URL) -> None:
    """List the models a server serves, with their state and versions."""
    with connect(url) as client:
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
    with connect(url) as client:
        document = client.get_model(model)
    if document.get("labels"):
        document["labels"] = f"{len(document['labels'])} labels"
    print_json(document)


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
    with connect(url) as client:
        info = client.get_model(model)
        given = inputs.read_model_input(file, model, info.get("inputs") or [])
        if given.file is not None and given.input_name is not None:
            result = client.predict_files(
                model, given.input_name, [given.file], version=model_version, top_k=top_k,
                detail=detail,
            )  # fmt: skip
        else:
            body = given.json_body(top_k)
            result = client.predict_body(model, body, version=model_version, detail=detail)
    print_json(result)


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
        fail(str(exc))
    typer.echo(str(path))


def main() -> None:
    app(prog_name="modelplex")


if __name__ == "__main__":
    main()
