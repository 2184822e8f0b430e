"""The ``pgagent-watch user`` commands and the demo's credentials, for real."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import psycopg
import pytest

from pgagent_watch.cluster import Cluster

from .test_auth import _create_db

CLI_DB = "auth_cli"


def _cli(
    *args: str, config: Path, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).parent / "pgagent-watch"
    return subprocess.run(
        [str(exe), *args[:2], "--config", str(config), *args[2:]],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONWARNINGS": "error"},
    )


@pytest.fixture(scope="module")
def config(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Path:
    _create_db(cluster, CLI_DB)
    with psycopg.connect(cluster.dsn(CLI_DB), autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS pgagent_watch CASCADE")
    path = tmp_path_factory.mktemp("cli") / "watch.toml"
    path.write_text(
        f'state_dsn = "{cluster.dsn(CLI_DB)}"\n'
        f'[[servers]]\nname = "test"\ndsn = "{cluster.dsn()}"\n'
    )
    return path


def test_user_add_prints_a_generated_password_once_and_list_shows_the_user(
    config: Path, cluster: Cluster
) -> None:
    r = _cli(
        "user",
        "add",
        "alice",
        "--email",
        "a@example.org",
        "--role",
        "operator",
        "--server",
        "test",
        config=config,
    )
    assert r.returncode == 0, r.stderr
    password = re.search(r"^password: (\S+)$", r.stdout, re.M)
    assert password and len(password.group(1)) >= 16
    listed = _cli("user", "list", config=config)
    assert "alice\toperator\ta@example.org\ttest" in listed.stdout
    assert password.group(1) not in listed.stdout
    with psycopg.connect(cluster.dsn(CLI_DB)) as conn:
        row = conn.execute(
            "SELECT password_hash FROM pgagent_watch.app_user WHERE name = 'alice'"
        ).fetchone()
        assert row and row[0].startswith("$argon2") and password.group(1) not in row[0]
        audited = conn.execute(
            "SELECT count(*) FROM pgagent_watch.audit"
            " WHERE action = 'user.create' AND target = 'alice'"
        ).fetchone()
        assert audited == (1,)


def test_user_add_reads_the_password_from_stdin_and_refuses_a_taken_name(
    config: Path,
) -> None:
    r = _cli(
        "user",
        "add",
        "bob",
        "--password-stdin",
        config=config,
        stdin="a long enough password\n",
    )
    assert r.returncode == 0, r.stderr
    assert "password:" not in r.stdout
    again = _cli("user", "add", "bob", config=config)
    assert again.returncode == 2 and "exists already" in again.stderr
    short = _cli(
        "user", "add", "carol", "--password-stdin", config=config, stdin="short\n"
    )
    assert short.returncode == 2 and "8 characters" in short.stderr
    bad = _cli("user", "add", "x'; DROP TABLE y; --", config=config)
    assert bad.returncode == 2 and "user name" in bad.stderr


def test_user_token_prints_a_new_token_that_is_kept_only_as_a_hash(
    config: Path, cluster: Cluster
) -> None:
    _cli("user", "add", "dave", config=config)
    r = _cli("user", "token", "dave", config=config)
    assert r.returncode == 0, r.stderr
    token = r.stdout.strip()
    assert token.startswith("pgw_")
    with psycopg.connect(cluster.dsn(CLI_DB)) as conn:
        rows = conn.execute(
            "SELECT t.token_hash FROM pgagent_watch.api_token t"
            " JOIN pgagent_watch.app_user u ON u.id = t.user_id WHERE u.name = 'dave'"
        ).fetchall()
    assert len(rows) == 1 and token.encode() not in bytes(rows[0][0])
    missing = _cli("user", "token", "nobody", config=config)
    assert missing.returncode == 2 and "no user named" in missing.stderr


@pytest.mark.slow
def test_the_demo_prints_its_credentials_and_the_page_asks_for_them() -> None:
    from pgagent_watch.cluster import free_port

    port = free_port()
    exe = Path(sys.executable).parent / "pgagent-watch"
    proc = subprocess.Popen(
        [str(exe), "demo", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        while not lines or not lines[-1].startswith("page:"):
            line = proc.stdout.readline()
            assert line, f"the demo ended early: {lines}"
            lines.append(line.rstrip("\n"))
        kinds = [line.split(":", 1)[0] for line in lines]
        assert kinds[:4] == ["database", "login", "token", "page"], lines
        _, name, password = lines[1].split(" ")
        token = lines[2].split(" ", 1)[1]
        url = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=url, follow_redirects=False, timeout=30) as c:
            assert c.get("/").status_code == 303
            assert c.get("/api/servers").status_code == 401
            r = c.post("/login", data={"name": name, "password": password})
            assert r.status_code == 303
            assert c.get("/").status_code == 200
        with httpx.Client(base_url=url, timeout=30) as c:
            me = c.get("/api/me", headers={"Authorization": f"Bearer {token}"})
            assert me.json()["name"] == "admin"
            assert me.json()["email"] == "admin@localhost"
            assert me.json()["role"] == "admin"
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        if proc.stdout is not None:
            proc.stdout.close()
