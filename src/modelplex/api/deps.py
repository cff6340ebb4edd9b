"""What a route reaches of the process: the composition root, and nothing behind it."""

from __future__ import annotations

from starlette.requests import Request

from modelplex.app import Modelplex
from modelplex.core.jsonlimits import JsonLimits


def modelplex_of(request: Request) -> Modelplex:
    modelplex: Modelplex = request.app.state.modelplex
    return modelplex


def json_limits_of(request: Request) -> JsonLimits:
    limits: JsonLimits = request.app.state.json_limits
    return limits
