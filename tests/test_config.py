"""Configuration precedence: file < CORRAL_* environment < flags."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.config import Config, load_config
from corral.errors import ConfigError


def test_defaults() -> None:
    config, sources = load_config(env={"CORRAL_DATA_DIR": "/nonexistent/corral"})
    assert config.heartbeat_interval == 1.0 and config.down_after == 3.0
    assert config.nats_port == 4333 and config.embedded
    assert config.store_url == "/nonexistent/corral/corral.db"
    assert sources == {"data_dir": "env:CORRAL_DATA_DIR"}


def test_file_then_env_then_flags(tmp_path: Path) -> None:
    (tmp_path / "corral.toml").write_text(
        'heartbeat_interval = 0.5\ndown_after = 2.0\nlog-format = "json"\nnats_port = 5000\n'
    )
    env = {"CORRAL_DATA_DIR": str(tmp_path), "CORRAL_DOWN_AFTER": "4", "CORRAL_TLS": "false"}
    config, sources = load_config({"nats_port": 6000, "store": None}, env=env)
    assert config.heartbeat_interval == 0.5 and sources["heartbeat_interval"].startswith("file:")
    assert config.log_format == "json"
    assert config.down_after == 4.0 and sources["down_after"] == "env:CORRAL_DOWN_AFTER"
    assert config.tls is False
    assert config.nats_port == 6000 and sources["nats_port"] == "flag"
    assert "store" not in sources  # None flags are "not given"


def test_explicit_file_wins_over_the_data_dir_file(tmp_path: Path) -> None:
    other = tmp_path / "other.toml"
    other.write_text("slots_unknown = 1\n")
    with pytest.raises(ConfigError, match="unknown setting 'slots_unknown'.*known settings"):
        load_config(env={}, config_file=str(other))


@pytest.mark.parametrize(
    ("env", "match"),
    [
        ({"CORRAL_NATS_PORT": "many"}, "CORRAL_NATS_PORT: nats_port must be a int"),
        ({"CORRAL_DOWN_AFTER": "0.5"}, "down_after .* must exceed heartbeat_interval"),
        (
            {"CORRAL_RETIRE_AFTER": "-1"},
            r"retire_after must be at least 0, got -1.0 \(from env:CORRAL_RETIRE_AFTER\)",
        ),
        ({"CORRAL_REPORT_INTERVAL": "0"}, "report_interval must be more than 0"),
        ({"CORRAL_STORE_FSYNC_INTERVAL": "-0.1"}, "store_fsync_interval must be at least 0"),
    ],
)
def test_bad_values_name_the_source_and_the_fix(env: dict[str, str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_config(env={"CORRAL_DATA_DIR": "/nonexistent", **env})


def test_unreadable_toml_is_a_config_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("this is = = not toml")
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(env={}, config_file=str(bad))


def test_bus_url_uses_tls_when_a_ca_exists(tmp_path: Path) -> None:
    (tmp_path / "pki").mkdir()
    assert Config(data_dir=str(tmp_path)).bus_url == "nats://127.0.0.1:4333"
    (tmp_path / "pki" / "ca.pem").write_text("x")
    assert Config(data_dir=str(tmp_path)).bus_url == "tls://127.0.0.1:4333"
    assert Config(data_dir=str(tmp_path), tls=False).bus_url == "nats://127.0.0.1:4333"
    assert Config(nats_url="nats://elsewhere:4222").bus_url == "nats://elsewhere:4222"


def test_a_bus_on_every_address_is_reached_through_loopback() -> None:
    assert Config(nats_host="0.0.0.0", tls=False).bus_url == "nats://127.0.0.1:4333"
