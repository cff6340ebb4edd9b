"""What the `modelplex` command reads from the files and options it is given.

`predict` and `jobs submit --model` read their FILE with one function,
`read_model_input`, so that both commands take the same files: a bare
instance, a list of instances, an `{"instance": ...}` or `{"instances": [...]}`
body (its `parameters` kept), or any other file (an image) for a model whose
one input is BYTES. Option values that the server would otherwise refuse under
their wire names (a header, a JSON field) are checked here, so that the error
names the option.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

import typer

MAX_IDEMPOTENCY_KEY = 200
"""The server's bound on an Idempotency-Key."""

SUBMIT_FIELDS = {
    "Idempotency-Key": "--idempotency-key",
    "callback_url": "--callback-url",
    "callback_events": "--callback-events",
    "metadata": "--metadata",
    "priority": "--priority",
}
"""Request fields and headers of `jobs submit`, by the option that sets them."""

LIST_FIELDS = {"status": "--status"}
"""Query parameters of `jobs list` that the server judges, by their option."""


@dataclass(frozen=True)
class ModelInput:
    """A model's input from FILE: a /v1 predict body, or a file for its BYTES input."""

    body: dict[str, Any] | None = None
    file: Path | None = None
    input_name: str | None = None

    def json_body(self, top_k: int | None = None) -> dict[str, Any]:
        """The input as a JSON predict body (a file as one `{"b64": ...}` instance)."""
        if self.file is not None:
            encoded = {"b64": base64.b64encode(self.file.read_bytes()).decode()}
            body: dict[str, Any] = {"instance": encoded}
        else:
            body = dict(self.body or {})
        if top_k is not None:
            parameters = body.get("parameters")
            body["parameters"] = {**(parameters if isinstance(parameters, dict) else {})}
            body["parameters"]["top_k"] = top_k
        return body


def read_json(file: Path, param: str = "'FILE'") -> Any:
    try:
        return json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise typer.BadParameter(f"{file} is not valid JSON: {exc}", param_hint=param) from None


def read_model_input(
    file: Path, model: str, inputs: Sequence[Mapping[str, Any]], param: str = "'FILE'"
) -> ModelInput:
    """FILE as the input of `model`, whose signature's inputs are `inputs`."""
    if file.suffix.lower() == ".json":
        return ModelInput(body=_body(read_json(file, param), inputs))
    if len(inputs) != 1 or inputs[0].get("datatype") != "BYTES":
        takes = ", ".join(f"{i['name']} ({i['datatype']})" for i in inputs) or "unknown inputs"
        raise typer.BadParameter(
            f"model '{model}' takes {takes}, not a file: give a .json file of instances",
            param_hint=param,
        )
    return ModelInput(file=file, input_name=str(inputs[0]["name"]))


def _body(document: Any, inputs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    if isinstance(document, dict) and ("instances" in document or "instance" in document):
        return document
    if isinstance(document, list) and _is_instance_list(document, inputs):
        return {"instances": document}
    return {"instance": document}


def _is_instance_list(document: list[Any], inputs: Sequence[Mapping[str, Any]]) -> bool:
    """Whether a JSON list is several instances or one: by the rank of the model's
    one input where it is known (a list nested one level deeper than the input
    is a list of instances), else a list of lists or objects is."""
    if not document:
        return True
    if len(inputs) == 1 and isinstance(inputs[0].get("shape"), list):
        return _depth(document) > len(inputs[0]["shape"])
    return isinstance(document[0], list | dict)


def _depth(value: Any) -> int:
    depth = 0
    while isinstance(value, list) and value:
        depth, value = depth + 1, value[0]
    return depth


# -- options ------------------------------------------------------------------
def metadata_option(values: list[str] | None) -> dict[str, Any] | None:
    """`--metadata KEY=VALUE` (repeatable; values are strings) or `--metadata JSON`
    (an object; its values keep their JSON types), merged in order."""
    if not values:
        return None
    merged: dict[str, Any] = {}
    for value in values:
        if value.lstrip().startswith("{"):
            try:
                document = json.loads(value)
            except ValueError as exc:
                raise typer.BadParameter(
                    f"not a JSON object: {exc}", param_hint="'--metadata'"
                ) from None
            if not isinstance(document, dict):
                raise typer.BadParameter("not a JSON object", param_hint="'--metadata'")
            merged.update(document)
            continue
        key, sep, text = value.partition("=")
        if not sep or not key:
            raise typer.BadParameter(
                f"'{value}' is neither KEY=VALUE nor a JSON object", param_hint="'--metadata'"
            )
        merged[key] = text
    return merged


def events_option(values: list[str] | None) -> list[str]:
    """`--callback-events a,b` (repeatable): the event names, in order, once each."""
    events: list[str] = []
    for value in values or []:
        for name in (part.strip() for part in value.split(",")):
            if name and name not in events:
                events.append(name)
    return events


def idempotency_key_option(value: str | None) -> str | None:
    """An Idempotency-Key travels as a header: printable ASCII, 1 to 200 characters."""
    if value is not None and not (
        1 <= len(value) <= MAX_IDEMPOTENCY_KEY
        and value == value.strip()
        and all(" " <= c <= "~" for c in value)
    ):
        raise typer.BadParameter(
            f"must be 1 to {MAX_IDEMPOTENCY_KEY} printable ASCII characters, "
            "without leading or trailing spaces"
        )
    return value


def callback_url_option(value: str | None) -> str | None:
    """The checks the server makes of a callback URL's form (not of its host's
    address, which only the server can judge)."""
    if value is None:
        return None
    try:
        parts = urlsplit(value)
        valid = parts.scheme in ("http", "https") and bool(parts.hostname)
        _ = parts.port  # a bad port raises here
    except ValueError:
        valid = False
    if not valid or any(ord(c) < 33 or ord(c) == 127 for c in value):
        raise typer.BadParameter("must be an absolute http or https URL")
    return value


def name_options(detail: str, options: Mapping[str, str]) -> str:
    """A server's message about a field or header, with the option's name instead
    (`callback_url host ... is not public` -> `--callback-url: host ...`)."""
    for field, option in options.items():
        for prefix in (f"'{field}", field):
            if detail.startswith(prefix):
                rest = detail[len(prefix) :]
                # a pydantic location goes on to an index (`'callback_events.0':`)
                if prefix.startswith("'"):
                    rest = rest.partition("'")[2]
                return f"{option}: {rest.lstrip(':').lstrip()}"
    return detail


VersionOption = Annotated[
    str | None, typer.Option("--version", help="Model version (default: the default).")
]
CallbackUrlOption = Annotated[
    str | None, typer.Option(callback=callback_url_option, help="Webhook URL.")
]
CallbackEventsOption = Annotated[
    list[str] | None, typer.Option(help="Extra webhook events, comma-separated: job.step.")
]
MetadataOption = Annotated[
    list[str] | None,
    typer.Option(help="KEY=VALUE (repeatable) or a JSON object; returned with the job."),
]
IdempotencyKeyOption = Annotated[
    str | None,
    typer.Option(
        callback=idempotency_key_option,
        help="Same key, same request: the same job (1 to 200 characters).",
    ),
]
