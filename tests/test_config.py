"""Configuration: TOML, environment overrides, clear errors, no secret shown."""

from __future__ import annotations

from pathlib import Path

import pytest

from pgagent_watch.config import load_settings
from pgagent_watch.errors import ConfigError

TOML = """
[[servers]]
name = "prod"
host = "db1.example.com"
port = 5433
dbname = "postgres"
user = "watch"
password = "s3cret-pass"

[[servers]]
name = "reporting"
dsn = "host=db2.example.com dbname=postgres user=watch password=other-secret"

[web]
port = 9000
"""


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "pgagent-watch.toml"
    path.write_text(TOML)
    return path


def test_a_toml_file_lists_servers_with_ids_by_position(config_file: Path) -> None:
    settings = load_settings(config_file)
    ids = settings.server_ids()
    assert [(i, s.name) for i, s in ids.items()] == [(1, "prod"), (2, "reporting")]
    assert "port=5433" in ids[1].conninfo()
    assert settings.web.port == 9000


def test_the_environment_overrides_the_file(
    config_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PGAGENT_WATCH_WEB__PORT", "9100")
    monkeypatch.setenv("PGAGENT_WATCH_LISTENER__SAFETY_INTERVAL", "7.5")
    settings = load_settings(config_file)
    assert settings.web.port == 9100
    assert settings.listener.safety_interval == 7.5


def test_passwords_never_show_in_reprs_or_descriptions(config_file: Path) -> None:
    settings = load_settings(config_file)
    text = repr(settings) + str(settings.model_dump())
    for server in settings.servers:
        text += server.describe()
    assert "s3cret-pass" not in text
    assert "other-secret" not in text
    # ...but the connection string has them.
    assert "s3cret-pass" in settings.servers[0].conninfo()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('[[servers]]\nname = "a b"\nhost = "x"\n', "server name"),
        ('[[servers]]\nname = "a"\n', "dsn or host"),
        ('[[servers]]\nname = "a"\nhost = "x"\nport = 70000\n', "servers.0.port"),
        (
            '[[servers]]\nname = "a"\nhost = "x"\n'
            '[[servers]]\nname = "a"\nhost = "y"\n',
            "unique",
        ),
        ("[web]\nport = 'eighty'\n", "web.port"),
        ("[nope]\nx = 1\n", "nope"),
        ("this is not toml", "not-toml.toml"),
    ],
)
def test_a_bad_config_names_the_problem(
    tmp_path: Path, body: str, message: str
) -> None:
    path = tmp_path / "not-toml.toml"
    path.write_text(body)
    with pytest.raises(ConfigError, match=message):
        load_settings(path)


def test_a_bad_dsn_is_refused_without_echoing_its_password(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[[servers]]\nname = "a"\ndsn = "host=x password=topsecret = ="\n')
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert "topsecret" not in str(info.value)
    assert "dsn is not valid" in str(info.value)


def test_a_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_settings(tmp_path / "absent.toml")


@pytest.mark.parametrize("port", ["99999", "-5", "eighty"])
def test_a_bad_port_on_the_command_line_is_a_usage_error(
    port: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from pgagent_watch.cli import main

    with pytest.raises(SystemExit) as info:
        main(["serve", "--port", port])
    assert info.value.code == 2
    assert "port" in capsys.readouterr().err
