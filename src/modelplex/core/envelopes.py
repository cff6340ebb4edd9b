"""Request envelopes: a body's fields declared once, for the parser and the OpenAPI document.

Every body a route parses is a pydantic model built on `Envelope`: `parse`
turns a decoded document into it (unknown fields refused, types strict where
JSON has them, a clear INVALID_INPUT otherwise), and the same class is what
the OpenAPI document shows. Payloads (arrays of numbers) stay `Any` inside an
envelope: they are decoded against the model's signature, not by pydantic.
"""

from __future__ import annotations

from typing import Annotated, Any, TypeGuard, TypeVar, get_args

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError

from modelplex.errors import InvalidInput

E = TypeVar("E", bound=BaseModel)

_MAX_FORM_DIGITS = 9


class Envelope(BaseModel):
    """A request body: unknown fields are errors, never ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _json_int(value: Any) -> Any:
    # JSON has integers: true, "5" or 5.5 is a client's mistake, not an int to coerce.
    if isinstance(value, bool | str | bytes) or (
        isinstance(value, float) and not value.is_integer()
    ):
        raise ValueError("must be an integer")
    return value


def _form_int(value: Any) -> Any:
    # Form fields are text: ASCII digits only (int() also reads other scripts' digits).
    if isinstance(value, str):
        text = value.strip()
        sign, digits = (text[0], text[1:]) if text[:1] in "+-" else ("", text)
        if not (digits.isascii() and digits.isdigit() and len(digits) <= _MAX_FORM_DIGITS):
            raise ValueError("must be an integer")
        return int(sign + digits)
    return _json_int(value)


JsonInt = Annotated[int, BeforeValidator(_json_int)]
"""An integer in a JSON body."""
FormInt = Annotated[int, BeforeValidator(_form_int)]
"""An integer in a form field (text)."""


def parse(envelope: type[E], document: Any, what: str = "the body") -> E:
    """`document` as `envelope`, or InvalidInput saying what does not fit."""
    if not isinstance(document, dict):
        raise InvalidInput(f"{what} must be a JSON object")
    try:
        return envelope.model_validate(document)
    except ValidationError as exc:
        raise InvalidInput(describe(exc, envelope)) from None


def describe(exc: ValidationError, envelope: type[BaseModel], at: str = "") -> str:
    """One readable sentence for a pydantic error (the first problems, not a dump);
    `at`: the path of the validated document in its request (e.g. `input`)."""
    prefix: tuple[str, ...] = (at,) if at else ()
    extra = [e["loc"] for e in exc.errors() if e["type"] == "extra_forbidden"]
    if extra:
        unknown = [_dotted((*prefix, *loc)) for loc in extra]
        fields = ", ".join(_model_at(envelope, extra[0][:-1]).model_fields)
        return f"unknown fields {unknown}; expected {fields}"
    problems = []
    for error in exc.errors()[:3]:
        where = _dotted((*prefix, *error["loc"]))
        if error["type"] == "missing":
            problems.append(f"'{where}' is required")
            continue
        message = str(error["msg"]).removeprefix("Value error, ")
        problems.append(f"'{where}': {message}" if where else message)
    return "; ".join(problems)


def _model_at(envelope: type[BaseModel], path: tuple[int | str, ...]) -> type[BaseModel]:
    """The envelope nested at `path` (a field's model, e.g. `parameters`)."""
    model = envelope
    for part in path:
        field = model.model_fields.get(str(part))
        nested = [t for t in get_args(field.annotation) if _is_model(t)] if field else []
        if field is not None and _is_model(field.annotation):
            nested = [field.annotation]
        if not nested:
            return model
        model = nested[0]
    return model


def _is_model(annotation: Any) -> TypeGuard[type[BaseModel]]:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _dotted(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc)
