"""Configuration errors people can act on: where, which key, what was expected.

pydantic's own rendering of a validation error spans lines, ends in a URL and
speaks of "inputs"; a person who mistyped a setting needs the file or
environment variable it came from, the key, what it should have been and, for
a typo, the key they meant. `problems()` turns a `ValidationError` into one
such line per problem; `load_settings()` reads `Settings` with them;
`unknown_environment()` finds `MODELPLEX_*` variables that no setting reads.
"""

from __future__ import annotations

import difflib
import os
import tomllib
import typing
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from modelplex.errors import ConfigurationError
from modelplex.settings import CONFIG_FILE_ENV, Settings

ENV_PREFIX = "MODELPLEX_"
NOT_SETTINGS = frozenset({"MODELPLEX_URL"})
"""`MODELPLEX_*` variables that are not settings: the CLI client's server URL."""
_OWN_PREFIXES = ("MODELPLEX_TEST_", "MODELPLEX_BENCH_")
"""modelplex's own test and benchmark variables."""
_SCALARS = (str, int, float, bool, type(None))


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """` (did you mean 'x'?)` for the closest choice, or nothing."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model an annotation holds (`X`, `X | None`, `list[X]`, `dict[str, X]`)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_of(arg)
        if found is not None:
            return found
    return None


def _keys_at(schema: type[BaseModel], path: tuple[int | str, ...]) -> list[str]:
    """The keys the schema accepts at `path` (list indexes and dict keys skipped)."""
    model: type[BaseModel] | None = schema
    for part in path:
        if model is None:
            return []
        if isinstance(part, str) and part in model.model_fields:
            model = _model_of(model.model_fields[part].annotation)
    return list(model.model_fields) if model is not None else []


def _problem(error: ErrorDetails, schema: type[BaseModel]) -> str:
    kind, message = error["type"], error["msg"]
    if kind == "extra_forbidden":
        loc = error["loc"]
        return "unknown key" + did_you_mean(str(loc[-1]), _keys_at(schema, loc[:-1]))
    if kind == "missing":
        return "required key is missing"
    for prefix, replacement in (("Input should be ", "expected "), ("Value error, ", "")):
        if message.startswith(prefix):
            message = replacement + message.removeprefix(prefix)
            break
    else:
        message = message[:1].lower() + message[1:]
    value = error.get("input")
    if isinstance(value, _SCALARS) and not isinstance(value, type(None)):
        shown = repr(value)
        message += f", got {shown if len(shown) <= 60 else shown[:57] + '...'}"
    return message


def problems(
    exc: ValidationError,
    schema: type[BaseModel],
    where: Callable[[tuple[int | str, ...]], str],
) -> list[str]:
    """One line per problem: `<where>: <what was wrong>`. `where(loc)` names the
    file or variable and key a value came from."""
    return [f"{where(e['loc'])}: {_problem(e, schema)}" for e in exc.errors()]


def dotted(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(p) for p in loc)


def _env_name(field: str, environ: Mapping[str, str]) -> str | None:
    wanted = f"{ENV_PREFIX}{field}".upper()
    # pydantic-settings reads environment variables case-insensitively.
    return next((name for name in environ if name.upper() == wanted), None)


def load_settings(**overrides: Any) -> Settings:
    """`Settings(**overrides)`, its errors as one ConfigurationError whose lines
    each name a command-line option, an environment variable or a TOML key."""
    given = {k: v for k, v in overrides.items() if v is not None}
    toml = given.get("config_file") or os.environ.get(CONFIG_FILE_ENV)
    try:
        return Settings(**given)
    except FileNotFoundError as exc:
        raise ConfigurationError(str(exc)) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"{toml}: not valid TOML: {exc}") from None
    except ValidationError as exc:

        def where(loc: tuple[int | str, ...]) -> str:
            field = str(loc[0]) if loc else ""
            if field in given:
                return f"{field} (command-line option)"
            env = _env_name(field, os.environ)
            if env is not None:
                return f"environment variable {env}"
            return f"{Path(toml)}: {dotted(loc)}" if toml else dotted(loc)

        raise ConfigurationError("\n".join(problems(exc, Settings, where))) from None


def unknown_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Each `MODELPLEX_*` variable that no setting reads (a typo, or a setting that
    does not exist), with a warning line that names the setting it may have meant."""
    environ = os.environ if environ is None else environ
    known = {f"{ENV_PREFIX}{name.upper()}" for name in Settings.model_fields} | NOT_SETTINGS
    unknown = {}
    for name in sorted(environ):
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX) or upper in known or upper.startswith(_OWN_PREFIXES):
            continue
        # Compared without the prefix every name shares, which would make any name
        # look close to a short one (MODELPLEX_FOO to MODELPLEX_PORT).
        suffixes = {k[len(ENV_PREFIX) :]: k for k in known if k.startswith(ENV_PREFIX)}
        close = difflib.get_close_matches(upper[len(ENV_PREFIX) :], list(suffixes), 1, 0.75)
        hint = f" (did you mean '{suffixes[close[0]]}'?)" if close else ""
        unknown[name] = f"unknown environment variable {name} is ignored{hint}"
    return unknown
