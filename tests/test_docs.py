"""The documentation names every setting, so a new one cannot go undocumented."""

from __future__ import annotations

from pathlib import Path

from modelplex.error_map import rows
from modelplex.settings import Settings

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_every_setting_is_documented() -> None:
    text = (DOCS / "5-configuration.md").read_text()
    for name in Settings.model_fields:
        assert f"`{name}`" in text, name
        assert f"`MODELPLEX_{name.upper()}`" in text, name


def test_every_error_code_is_documented() -> None:
    text = (DOCS / "4-api.md").read_text()
    for _, wire in rows():
        assert f"`{wire.code}`" in text, wire.code


def test_docs_index_links_exist() -> None:
    index = (DOCS / "README.md").read_text()
    for line in index.splitlines():
        if "](" in line:
            target = line.split("](", 1)[1].split(")", 1)[0]
            assert (DOCS / target).is_file(), target
