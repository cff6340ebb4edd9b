"""`modelplex keys ...`: API keys, managed directly in the configured database
(`database_url`, else SQLite in `data_dir`), whether or not a server runs. A
server sees a new or revoked key within `key_cache_ttl_s`."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from modelplex.cli.common import fail, print_json

keys_app = typer.Typer(no_args_is_help=True, help="API keys (in the configured database).")
T = TypeVar("T")

ConfigOption = Annotated[Path | None, typer.Option("--config", help="TOML settings file.")]
DataDirOption = Annotated[
    Path | None, typer.Option(help="Runtime state holding the database (default .modelplex).")
]


def _run(config: Path | None, data_dir: Path | None, work: Callable[[Any], Awaitable[T]]) -> T:
    """`work(manager)` on a key manager over the configured database; one line on
    stderr and exit 1 on any modelplex error."""
    from modelplex.app import database_url
    from modelplex.auth.keys import KeyManager, key_pepper
    from modelplex.cli import _settings
    from modelplex.errors import ModelplexError
    from modelplex.storage.sql import SqlStore

    settings = _settings(config_file=config, data_dir=data_dir)

    async def main() -> T:
        store = SqlStore.connect(
            database_url(settings), command_timeout_s=settings.database_command_timeout_s
        )
        try:
            await store.migrate()
            return await work(KeyManager(store, key_pepper(settings)))
        finally:
            await store.close()

    try:
        return asyncio.run(main())
    except ModelplexError as exc:
        fail(str(exc))


def _line(view: dict[str, Any]) -> str:
    models = ",".join(view["models"]) if view["models"] is not None else "*"
    return (
        f"{view['id']}  {view['prefix']}  {view['state']:<8} {view['name']}  "
        f"scopes={','.join(view['scopes'])} models={models}"
    )


def _split(text: str | None) -> list[str] | None:
    return None if text is None else [part.strip() for part in text.split(",") if part.strip()]


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="What the key is for.")],
    scopes: Annotated[str, typer.Option(help="Comma-separated scopes, e.g. predict,jobs:write.")],
    models: Annotated[
        str | None, typer.Option(help="Comma-separated model allow-list (default: every model).")
    ] = None,
    expires_in: Annotated[
        str | None, typer.Option(help="Lifetime, e.g. 30d, 12h, 90m (default: none).")
    ] = None,
    rate_limit: Annotated[str | None, typer.Option(help="e.g. 50/second.")] = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the key's record (with the key) as JSON.")
    ] = False,
    data_dir: DataDirOption = None,
    config: ConfigOption = None,
) -> None:
    """Create a key and print it (the key alone on stdout): it is shown this once."""
    from modelplex.auth.keys import key_view

    async def work(manager: Any) -> Any:
        return await manager.create(
            name, _split(scopes) or [], models=_split(models), expires_in=expires_in,
            rate_limit=rate_limit,
        )  # fmt: skip

    created = _run(config, data_dir, work)
    if json_output:
        print_json({"key": created.key, **key_view(created.record)})
    else:
        typer.echo(created.key)


@keys_app.command("list")
def keys_list(
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    data_dir: DataDirOption = None,
    config: ConfigOption = None,
) -> None:
    """List keys (prefix, state, scopes, models; never the key)."""
    from modelplex.auth.keys import key_view

    async def work(manager: Any) -> Any:
        return await manager.list()

    views = [key_view(k) for k in _run(config, data_dir, work)]
    if json_output:
        print_json({"keys": views})
        return
    for view in views:
        typer.echo(_line(view))


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id (key_...).")],
    data_dir: DataDirOption = None,
    config: ConfigOption = None,
) -> None:
    """Revoke a key: servers refuse it within key_cache_ttl_s."""
    from modelplex.auth.keys import key_view

    async def work(manager: Any) -> Any:
        return await manager.revoke(key_id)

    typer.echo(_line(key_view(_run(config, data_dir, work))))


@keys_app.command("rotate")
def keys_rotate(
    key_id: Annotated[str, typer.Argument(help="The key's id (key_...).")],
    json_output: Annotated[bool, typer.Option("--json", help="Print the record as JSON.")] = False,
    data_dir: DataDirOption = None,
    config: ConfigOption = None,
) -> None:
    """Give a key a new secret and print it; the old one stops working."""
    from modelplex.auth.keys import key_view

    async def work(manager: Any) -> Any:
        return await manager.rotate(key_id)

    rotated = _run(config, data_dir, work)
    if json_output:
        print_json({"key": rotated.key, **key_view(rotated.record)})
    else:
        typer.echo(rotated.key)
