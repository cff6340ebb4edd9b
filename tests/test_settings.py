from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from modelplex.settings import Settings


def test_defaults() -> None:
    settings = Settings()
    assert (settings.host, settings.port) == ("127.0.0.1", 8000)
    assert settings.model_repository is None
    assert settings.data_dir == Path(".modelplex")


def test_environment_overrides_toml_and_arguments_override_both(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "modelplex.toml"
    config.write_text('port = 9100\nhost = "0.0.0.0"\nmax_request_bytes = 1024\n')
    monkeypatch.setenv("MODELPLEX_CONFIG_FILE", str(config))
    monkeypatch.setenv("MODELPLEX_PORT", "9200")
    settings = Settings()
    assert settings.port == 9200
    assert settings.host == "0.0.0.0"
    assert settings.max_request_bytes == 1024
    assert Settings(port=9300).port == 9300


def test_invalid_values_and_unknown_keys_are_rejected(tmp_path: Path) -> None:
    config = tmp_path / "modelplex.toml"
    config.write_text("prot = 1\n")
    with pytest.raises(ValidationError):
        Settings(config_file=config)
    with pytest.raises(ValidationError):
        Settings(port=70000)


def test_missing_config_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        Settings(config_file=tmp_path / "absent.toml")


def test_unknown_environment_variables_are_found_with_a_did_you_mean() -> None:
    from modelplex.config_errors import unknown_environment

    found = unknown_environment(
        {"MODELPLEX_PROT": "1", "MODELPLEX_PORT": "2", "MODELPLEX_URL": "x", "HOME": "/",
         "MODELPLEX_FOO": "1", "MODELPLEX_REDIS_URL": "redis://"}
    )  # fmt: skip
    assert found == {
        "MODELPLEX_PROT": "unknown environment variable MODELPLEX_PROT is ignored "
        "(did you mean 'MODELPLEX_PORT'?)",
        # Nothing close once the shared prefix is set aside: no misleading hint.
        "MODELPLEX_FOO": "unknown environment variable MODELPLEX_FOO is ignored",
        "MODELPLEX_REDIS_URL": "unknown environment variable MODELPLEX_REDIS_URL is ignored",
    }


def test_invalid_settings_name_their_source(monkeypatch: pytest.MonkeyPatch) -> None:
    from modelplex.config_errors import load_settings
    from modelplex.errors import ConfigurationError

    monkeypatch.setenv("MODELPLEX_WORKERS", "many")
    with pytest.raises(ConfigurationError) as raised:
        load_settings(port=70000)
    assert str(raised.value).splitlines() == [
        "port (command-line option): expected less than or equal to 65535, got 70000",
        "environment variable MODELPLEX_WORKERS: expected a valid integer, unable to parse "
        "string as an integer, got 'many'",
    ]
