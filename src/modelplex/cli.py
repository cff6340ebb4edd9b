"""The `modelplex` command line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, NoReturn

import orjson
import typer

import modelplex
from modelplex.client import DEFAULT_URL, ClientError, ModelplexClient
from modelplex.settings import Settings

app = typer.Typer(no_args_is_help=True, add_completion=False, help="modelplex model server.")
models_app = typer.Typer(no_args_is_help=True, help="Inspect the models a server serves.")
examples_app = typer.Typer(no_args_is_help=True, help="The example model repository.")
app.add_typer(models_app, name="models")
app.add_typer(examples_app, name="examples")

UrlOption = Annotated[
    str, typer.Option("--url", envvar="MODELPLEX_URL", help="Base URL of a running server.")
]


def _settings(**overrides: Any) -> Settings:
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except (ValueError, FileNotFoundError) as exc:
        _fail(f"invalid settings: {exc}")


def _fail(message: str) -> NoReturn:
    typer.secho(message, fg=typer.colors.RED, err=True)
    raise typer.Exit(1)


def _print(document: Any) -> None:
    typer.echo(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode())


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Interface to bind (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default 8000).")] = None,
    model_repository: Annotated[
        Path | None, typer.Option(help="Model repository (default: the example models).")
    ] = None,
    config: Annotated[Path | None, typer.Option(help="TOML settings file.")] = None,
) -> None:
    """Serve a model repository over HTTP (the example models by default)."""
    from modelplex.errors import ModelplexError
    from modelplex.server import configure_logging
    from modelplex.server import serve as run_server

    settings = _settings(
        host=host, port=port, model_repository=model_repository, config_file=config
    )
    configure_logging(settings.log_level)
    try:
        run_server(settings)
    except ModelplexError as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(f"cannot serve on {settings.host}:{settings.port}: {exc}")


@app.command()
def version() -> None:
    """Print modelplex's version."""
    typer.echo(modelplex.__version__)


@models_app.command("list")
def models_list(url: UrlOption = DEFAULT_URL) -> None:
    """List the models a server serves, with their state and versions."""
    with ModelplexClient(url) as client:
        try:
            models = client.list_models()
        except ClientError as exc:
            _fail(str(exc))
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
    with ModelplexClient(url) as client:
        try:
            document = client.get_model(model)
        except ClientError as exc:
            _fail(str(exc))
    if document.get("labels"):
        document["labels"] = f"{len(document['labels'])} labels"
    _print(document)


@app.command()
def predict(
    model: str,
    file: Annotated[
        Path,
        typer.Argument(
            exists=True, dir_okay=False, help="A JSON file of instances, or an input file (image)."
        ),
    ],
    model_version: Annotated[str | None, typer.Option("--version", help="Model version.")] = None,
    top_k: Annotated[int | None, typer.Option(min=1, help="Classes per instance.")] = None,
    detail: Annotated[str, typer.Option(help="minimal, standard or verbose.")] = "standard",
    url: UrlOption = DEFAULT_URL,
) -> None:
    """Send FILE to MODEL and print the result.

    A .json file holds one instance, a list of instances, or a full request body
    ({"instances": [...]}); any other file is uploaded to the model's BYTES input.
    """
    with ModelplexClient(url) as client:
        try:
            if file.suffix.lower() == ".json":
                instances = _instances_from_json(file)
                result = client.predict(
                    model, instances, version=model_version, top_k=top_k, detail=detail
                )
            else:
                info = client.get_model(model)
                byte_inputs = [
                    i["name"] for i in info.get("inputs") or [] if i["datatype"] == "BYTES"
                ]
                if len(byte_inputs) != 1:
                    _fail(
                        f"model '{model}' has no single BYTES input to upload a file to; use JSON"
                    )
                result = client.predict_files(
                    model, byte_inputs[0], [file], version=model_version, top_k=top_k, detail=detail
                )
        except ClientError as exc:
            _fail(str(exc))
    _print(result)


def _instances_from_json(file: Path) -> list[Any]:
    try:
        document = json.loads(file.read_text())
    except (OSError, ValueError) as exc:
        _fail(f"{file} is not valid JSON: {exc}")
    if isinstance(document, dict) and "instances" in document:
        instances = document["instances"]
        return instances if isinstance(instances, list) else [instances]
    if isinstance(document, dict) and "instance" in document:
        return [document["instance"]]
    return (
        document
        if isinstance(document, list) and document and isinstance(document[0], list | dict)
        else [document]
    )


@examples_app.command("build")
def examples_build(
    cache_dir: Annotated[Path | None, typer.Option(help="Cache directory.")] = None,
) -> None:
    """Build the example model repository (needs the 'examples' extra) and print its path."""
    from modelplex.errors import ModelplexError
    from modelplex.examples import ensure_example_repository
    from modelplex.server import configure_logging

    settings = _settings(cache_dir=cache_dir)
    configure_logging(settings.log_level)
    try:
        path = ensure_example_repository(settings.cache_dir)
    except ModelplexError as exc:
        _fail(str(exc))
    typer.echo(str(path))


def main() -> None:
    app(prog_name="modelplex")


if __name__ == "__main__":
    main()
