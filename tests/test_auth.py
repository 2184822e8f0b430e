"""Users, sign-in, roles, CSRF and secrets against the real service.

One service for the module, watching two databases of the test cluster
("test": the daemon's, "two": a second one) and one that is down, with its
own state database so that the users made here never reach other modules.
The generic tests walk the OpenAPI description, so that routes added by
other modules are held to the same rules.
"""

from __future__ import annotations

import asyncio
import html
import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx
import psycopg
import pytest
import socketio
from itsdangerous import URLSafeTimedSerializer

from pgagent_watch import audit, samples, users
from pgagent_watch.cluster import Cluster, free_port
from pgagent_watch.demo import prepare_database

from .fix_cluster import Running, running_service, settings_for, until

SECRET = "S3cret-Passw0rd-4-leak-test"
PASSWORD = "correct horse battery"
STATE_DB = "auth_state"
SECOND_DB = "auth_two"
# Routes anyone may read, without signing in.
PUBLIC = {"/healthz"}
STATE_CHANGING = {"post", "put", "patch", "delete"}


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@dataclass
class Stack:
    running: Running
    state_dsn: str
    logs: _Collect
    tokens: dict[str, str] = field(default_factory=dict)
    ids: dict[str, int] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.running.url


def _create_db(cluster: Cluster, name: str) -> None:
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        cur = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
        if cur.fetchone() is None:
            conn.execute(
                psycopg.sql.SQL("CREATE DATABASE {}").format(
                    psycopg.sql.Identifier(name)
                )
            )


# name -> (role, servers)
USERS: dict[str, tuple[str, list[str] | None]] = {
    "admin": ("admin", None),
    "op1": ("operator", ["test"]),
    "view1": ("viewer", ["test"]),
    "view2": ("viewer", ["two"]),
    "slow": ("viewer", None),
    "fuzzer": ("admin", None),
}


@pytest.fixture(scope="module")
async def stack(cluster: Cluster) -> AsyncIterator[Stack]:
    _create_db(cluster, STATE_DB)
    _create_db(cluster, SECOND_DB)
    prepare_database(cluster.dsn(SECOND_DB))
    logs = _Collect()
    root = logging.getLogger()
    ours = logging.getLogger("pgagent_watch")
    old_level = ours.level
    root.addHandler(logs)
    ours.setLevel(logging.DEBUG)
    settings = settings_for(
        cluster,
        servers=[
            {"name": "test", "dsn": cluster.dsn()},
            {"name": "two", "dsn": cluster.dsn(SECOND_DB), "password": SECRET},
            {
                "name": "down",
                # Far from the ids a fuzzer tries first: each read of it
                # waits for the pool's timeout.
                "id": 77,
                "host": "127.0.0.1",
                "port": free_port(),
                "dbname": "postgres",
                "user": "nobody",
                "password": SECRET,
            },
        ],
        state_dsn=cluster.dsn(STATE_DB),
        # Mail and web hook secrets, to be found nowhere either.
        smtp={
            "host": "127.0.0.1",
            "port": free_port(),
            "user": "mailer",
            "password": SECRET,
            "timeout": 2,
        },
        alerts={
            "channels": {
                "hook": {
                    "url": f"json://127.0.0.1:{free_port()}/hook",
                    "user": "hooker",
                    "password": SECRET + "@/x",
                }
            }
        },
        auth={
            "free_attempts": 2,
            "backoff_initial": 30,
            "backoff_max": 60,
            "socket_check_interval": 0.3,
        },
    )
    try:
        async with running_service(settings) as running:
            service = running.service
            await until(service.state_ready.is_set, "state database ready")
            st = Stack(running, cluster.dsn(STATE_DB), logs)
            async with service.state_pool.connection() as conn:
                await conn.execute(
                    "TRUNCATE pgagent_watch.app_user, pgagent_watch.audit CASCADE"
                )
                for name, (role, servers) in USERS.items():
                    st.ids[name] = await users.create_user(
                        conn,
                        name,
                        role,
                        email=f"{name}@example.org",
                        password=PASSWORD,
                        servers=servers,
                    )
                    st.tokens[name] = await users.create_token(conn, st.ids[name])
            service.forget_users_exist()
            await until(
                lambda: service.servers[1].listener.status.state.value == "connected",
                "listener of test connected",
            )
            yield st
    finally:
        root.removeHandler(logs)
        ours.setLevel(old_level)


def bearer(st: Stack, name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {st.tokens[name]}"}


class Session:
    """A signed-in browser: the cookie and the CSRF token from /api/me."""

    def __init__(self, client: httpx.AsyncClient, csrf: str, cookie: str) -> None:
        self.client = client
        self.csrf = csrf
        self.cookie = cookie

    async def __aenter__(self) -> Session:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.aclose()


async def sign_in(st: Stack, name: str, password: str = PASSWORD) -> Session:
    client = httpx.AsyncClient(base_url=st.url, follow_redirects=False, timeout=30)
    r = await client.post(
        "/login", data={"name": name, "password": password, "next": "/"}
    )
    assert r.status_code == 303, r.text
    me = await client.get("/api/me")
    assert me.status_code == 200
    return Session(client, me.json()["csrf_token"], client.cookies["pgw_session"])


async def api(st: Stack, cookie: str | None = None) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=st.url,
        follow_redirects=False,
        timeout=30,
        cookies={"pgw_session": cookie} if cookie else None,
    )


async def routes(st: Stack) -> list[tuple[str, str, dict[str, Any]]]:
    """(method, path, operation) of every route in the OpenAPI description."""
    async with await api(st) as c:
        schema = (await c.get("/api/openapi.json", headers=bearer(st, "admin"))).json()
    out = []
    for path, ops in schema["paths"].items():
        for method, op in ops.items():
            if method in {"get", "post", "put", "patch", "delete"}:
                out.append((method, path, op))
    return out


def filled(path: str, value: str = "1") -> str:
    return re.sub(r"\{[^}]+\}", value, path)


# -- sign-in and the page -----------------------------------------------------


async def test_the_page_sends_nobody_anywhere_but_the_sign_in_page(
    stack: Stack,
) -> None:
    async with await api(stack) as c:
        r = await c.get("/")
        assert r.status_code == 303 and r.headers["location"] == "/login"
        page = await c.get("/login")
        assert page.status_code == 200
        assert 'name="password"' in page.text
        csp = page.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp
        assert (await c.get("/api/servers")).status_code == 401
        assert (await c.get("/admin")).status_code == 303


async def test_a_signed_in_user_gets_an_httponly_samesite_cookie_and_the_page(
    stack: Stack,
) -> None:
    client = httpx.AsyncClient(base_url=stack.url, follow_redirects=False)
    async with client:
        r = await client.post(
            "/login",
            data={"name": "view1", "password": PASSWORD, "next": "//evil.example/"},
        )
        assert r.status_code == 303
        assert r.headers["location"] == "/"
        for evil in ("/\t/evil.example", "/\\evil.example", "https://evil.example"):
            # Signed in already: the sign-in page sends on, but only home.
            page = await client.get("/login", params={"next": evil})
            assert page.headers["location"] == "/", evil
        cookie = r.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=lax" in cookie
        assert (await client.get("/")).status_code == 200
        me = (await client.get("/api/me")).json()
        assert me["name"] == "view1" and me["role"] == "viewer"
        assert me["servers"] == [1] and me["csrf_token"]
        # Signing in again in the same browser gives a new session and ends
        # the old one (no session fixation).
        old = client.cookies["pgw_session"]
        r = await client.post("/login", data={"name": "view1", "password": PASSWORD})
        assert r.status_code == 303 and client.cookies["pgw_session"] != old
    async with await api(stack, old) as c:
        assert (await c.get("/api/me")).status_code == 401


async def test_a_wrong_password_is_refused_and_repeated_failures_are_slowed(
    stack: Stack,
) -> None:
    async with await api(stack) as c:
        for _ in range(2):
            r = await c.post("/login", data={"name": "slow", "password": "wrong-one"})
            assert r.status_code == 401
            assert "wrong name or password" in r.text
        # Two failures are free; now even the right password waits.
        r = await c.post("/login", data={"name": "slow", "password": PASSWORD})
        assert r.status_code == 429
        assert int(r.headers["retry-after"]) > 0
        # Another user from the same address is not held back.
        async with await sign_in(stack, "view2") as other:
            assert other.csrf
        audit = await c.get(
            "/api/audit", params={"user": "slow"}, headers=bearer(stack, "admin")
        )
        entries = audit.json()
        assert entries and all(not e["ok"] for e in entries)
        assert all(e["address"] == "127.0.0.1" for e in entries)


async def test_sign_in_from_a_foreign_origin_is_refused(stack: Stack) -> None:
    async with await api(stack) as c:
        r = await c.post(
            "/login",
            data={"name": "view1", "password": PASSWORD},
            headers={"Origin": "http://evil.example"},
        )
        assert r.status_code == 403
        assert "pgw_session" not in r.headers.get("set-cookie", "")


async def test_sign_out_needs_the_csrf_token_and_ends_the_session(
    stack: Stack,
) -> None:
    s = await sign_in(stack, "view1")
    async with s:
        assert (await s.client.post("/api/logout")).status_code == 403
        r = await s.client.post("/api/logout", headers={"X-CSRF-Token": s.csrf})
        assert r.status_code == 204
    async with await api(stack, s.cookie) as c:
        r = await c.get("/api/me")
        assert r.status_code == 401
        audit = await c.get(
            "/api/audit",
            params={"action": "auth.sign_out"},
            headers=bearer(stack, "admin"),
        )
        assert any(e["user_name"] == "view1" for e in audit.json())


async def test_the_sign_out_form_ends_the_session(stack: Stack) -> None:
    s = await sign_in(stack, "view2")
    async with s:
        form = await s.client.get("/logout")
        assert s.csrf in form.text
        bad = await s.client.post("/logout", data={"csrf_token": "nope"})
        assert bad.status_code == 403
        r = await s.client.post("/logout", data={"csrf_token": s.csrf})
        assert r.status_code == 303
        assert (await s.client.get("/api/me")).status_code == 401


async def test_an_expired_or_forged_cookie_is_refused(stack: Stack) -> None:
    s = await sign_in(stack, "view1")
    await s.client.aclose()
    forged = URLSafeTimedSerializer("not the key", salt="pgw-session").dumps("x")
    for bad in (forged, "garbage", s.cookie + "x"):
        async with await api(stack, bad) as c:
            r = await c.get("/api/me")
            assert r.status_code == 401
    async with await api(stack, s.cookie) as c:
        assert (await c.get("/api/me")).status_code == 200
        with psycopg.connect(stack.state_dsn, autocommit=True) as conn:
            conn.execute(
                "UPDATE pgagent_watch.auth_session"
                " SET last_seen_at = now() - interval '2 hours'"
            )
        r = await c.get("/api/me")
        assert r.status_code == 401


# -- every route, generically --------------------------------------------------


async def test_every_route_requires_authentication_once_users_exist(
    stack: Stack,
) -> None:
    found = await routes(stack)
    assert len(found) >= 10
    async with await api(stack) as c:
        for method, path, _ in found:
            if path in PUBLIC:
                continue
            r = await c.request(method, filled(path), json={})
            assert r.status_code == 401, (method, path, r.status_code, r.text)


async def test_every_state_changing_route_needs_csrf_from_a_cookie_session(
    stack: Stack,
) -> None:
    s = await sign_in(stack, "admin")
    async with s:
        for method, path, _ in await routes(stack):
            if method not in STATE_CHANGING:
                continue
            for headers in ({}, {"X-CSRF-Token": "wrong"}, {"X-CSRF-Token": ""}):
                r = await s.client.request(
                    method, filled(path), json={}, headers=headers
                )
                assert r.status_code == 403, (method, path, headers, r.text)
        # The right token passes the check (whatever the route says next).
        r = await s.client.post(
            "/api/tokens", json={"name": "t"}, headers={"X-CSRF-Token": s.csrf}
        )
        assert r.status_code == 201


BAD_IDS = [
    "-1",
    "0",
    str(2**31),
    str(2**63),
    "99999999999999999999999",
    "abc",
    "1.5",
    "1;DROP TABLE x",
    "1' OR '1'='1",
    "%C3%A9",
    "%D9%A1",
    "%00",
    "1e3",
]


async def test_bad_ids_in_every_route_get_a_4xx_never_a_500(stack: Stack) -> None:
    async with await api(stack) as c:
        for method, path, _ in await routes(stack):
            if "{" not in path:
                continue
            for bad in BAD_IDS:
                r = await c.request(
                    method, filled(path, bad), json={}, headers=bearer(stack, "admin")
                )
                assert 400 <= r.status_code < 500, (method, path, bad, r.status_code)
                assert SECRET not in r.text


async def test_a_viewer_changes_nothing_on_a_server_and_an_operator_only_on_theirs(
    stack: Stack,
) -> None:
    async with await api(stack) as c:
        for method, path, _ in await routes(stack):
            if method not in STATE_CHANGING or not path.startswith("/api/servers/"):
                continue
            for who, server in (("view1", "1"), ("op1", "2"), ("view2", "1")):
                r = await c.request(
                    method,
                    filled(path).replace("/api/servers/1", f"/api/servers/{server}", 1),
                    json={},
                    headers=bearer(stack, who),
                )
                assert r.status_code >= 400, (who, method, path, r.text)


# -- explicit expectations per role -------------------------------------------


async def test_each_role_sees_only_its_servers(stack: Stack) -> None:
    async with await api(stack) as c:
        seen = {}
        for who in ("admin", "op1", "view1", "view2"):
            r = await c.get("/api/servers", headers=bearer(stack, who))
            seen[who] = sorted(s["id"] for s in r.json())
        assert seen == {
            "admin": [1, 2, 77],
            "op1": [1],
            "view1": [1],
            "view2": [2],
        }
        assert (
            await c.get("/api/servers/1/jobs", headers=bearer(stack, "view1"))
        ).status_code == 200
        # Not granted and absent look the same.
        for path in ("/api/servers/1/jobs", "/api/servers/99/jobs"):
            r = await c.get(path, headers=bearer(stack, "view2"))
            assert r.status_code == 404


@pytest.mark.parametrize("who", ["op1", "view1"])
async def test_only_an_admin_manages_users_and_reads_the_audit(
    stack: Stack, who: str
) -> None:
    async with await api(stack) as c:
        h = bearer(stack, who)
        uid = stack.ids["view2"]
        for method, path, body in (
            ("GET", "/api/users", None),
            ("POST", "/api/users", {"name": "intruder", "role": "admin"}),
            ("GET", f"/api/users/{uid}", None),
            ("PATCH", f"/api/users/{uid}", {"role": "admin"}),
            ("PUT", f"/api/users/{uid}/grants", {"servers": ["*"]}),
            ("DELETE", f"/api/users/{uid}", None),
            ("GET", "/api/audit", None),
        ):
            r = await c.request(method, path, json=body, headers=h)
            assert r.status_code == 403, (who, method, path, r.text)
        page = await c.get("/admin", headers=h)
        assert page.status_code == 403


async def test_an_admin_creates_changes_and_deletes_a_user_and_it_is_audited(
    stack: Stack,
) -> None:
    async with await api(stack) as c:
        h = bearer(stack, "admin")
        r = await c.post(
            "/api/users",
            json={"name": "newbie", "email": "n@example.org", "servers": ["two"]},
            headers=h,
        )
        assert r.status_code == 201, r.text
        created = r.json()
        assert created["role"] == "viewer" and len(created["password"]) >= 16
        assert "password_hash" not in r.text
        dup = await c.post("/api/users", json={"name": "newbie"}, headers=h)
        assert dup.status_code == 409
        s = await sign_in(stack, "newbie", created["password"])
        async with s:
            assert (await s.client.get("/api/me")).json()["servers"] == [2]
            r = await c.put(
                f"/api/users/{created['id']}/grants",
                json={"servers": ["test", "two"]},
                headers=h,
            )
            assert r.json()["servers"] == ["test", "two"]
            assert (await s.client.get("/api/me")).json()["servers"] == [1, 2]
            r = await c.patch(
                f"/api/users/{created['id']}", json={"disabled": True}, headers=h
            )
            assert r.status_code == 200 and r.json()["disabled"]
            # Disabling ends the user's sessions.
            assert (await s.client.get("/api/me")).status_code == 401
        assert (
            await c.delete(f"/api/users/{created['id']}", headers=h)
        ).status_code == 204
        assert (
            await c.get(f"/api/users/{created['id']}", headers=h)
        ).status_code == 404
        actions = [
            e["action"]
            for e in (await c.get("/api/audit", headers=h)).json()
            if e["target"] == "newbie"
        ]
        for action in ("user.create", "user.grants", "user.update", "user.delete"):
            assert action in actions
        page = await c.get("/admin", headers=h)
        assert page.status_code == 200 and "user.delete" in page.text


async def test_an_admin_creates_and_disables_a_user_on_the_admin_page(
    stack: Stack,
) -> None:
    async with await sign_in(stack, "admin") as s:
        page = await s.client.get("/admin")
        assert s.csrf in page.text
        form = {"name": "paged", "email": "p@example.org", "role": "operator"}
        r = await s.client.post("/admin/users", data=form)
        assert r.status_code == 403
        r = await s.client.post(
            "/admin/users", data={**form, "servers": "two", "csrf_token": s.csrf}
        )
        assert r.status_code == 201, r.text
        password = re.search(r"<code>([^<]+)</code>", r.text)
        assert password
        async with await sign_in(stack, "paged", html.unescape(password.group(1))) as p:
            me = (await p.client.get("/api/me")).json()
            assert me["role"] == "operator" and me["servers"] == [2]
            async with await api(stack) as c:
                found = await c.get("/api/users", headers=bearer(stack, "admin"))
            paged = next(u for u in found.json() if u["name"] == "paged")
            r = await s.client.post(
                f"/admin/users/{paged['id']}/disable", data={"csrf_token": s.csrf}
            )
            assert r.status_code == 303
            assert (await p.client.get("/api/me")).status_code == 401
        r = await s.client.post(
            f"/admin/users/{paged['id']}/delete", data={"csrf_token": "wrong"}
        )
        assert r.status_code == 403
        r = await s.client.post(
            f"/admin/users/{paged['id']}/delete", data={"csrf_token": s.csrf}
        )
        assert r.status_code == 303
        page = await s.client.get("/admin")
        assert f"/admin/users/{paged['id']}/" not in page.text
        assert "user.delete" in page.text


async def test_a_user_changes_their_own_password_and_their_sessions_end(
    stack: Stack,
) -> None:
    async with await api(stack) as c:
        r = await c.post(
            "/api/users",
            json={"name": "changer", "password": PASSWORD},
            headers=bearer(stack, "admin"),
        )
        assert r.status_code == 201
    async with await sign_in(stack, "changer") as s:
        new = {"current_password": "not it at all", "new_password": "a new password"}
        h = {"X-CSRF-Token": s.csrf}
        assert (await s.client.post("/api/me/password", json=new)).status_code == 403
        r = await s.client.post("/api/me/password", json=new, headers=h)
        assert r.status_code == 403
        right = {**new, "current_password": PASSWORD}
        r = await s.client.post("/api/me/password", json=right, headers=h)
        assert r.status_code == 204
        assert (await s.client.get("/api/me")).status_code == 401
    async with await sign_in(stack, "changer", "a new password") as s:
        assert (await s.client.get("/api/me")).json()["name"] == "changer"


async def test_the_last_admin_cannot_be_demoted(stack: Stack) -> None:
    async with await api(stack) as c:
        h = bearer(stack, "admin")
        r = await c.post(
            "/api/users", json={"name": "solo", "role": "admin"}, headers=h
        )
        solo = r.json()["id"]
        # Two other admins exist; demoting this one is fine, then restore.
        r = await c.patch(f"/api/users/{solo}", json={"role": "viewer"}, headers=h)
        assert r.status_code == 200
        await c.delete(f"/api/users/{solo}", headers=h)


async def test_everyone_manages_their_own_tokens_only(stack: Stack) -> None:
    async with await api(stack) as c:
        r = await c.post(
            "/api/tokens", json={"name": "script"}, headers=bearer(stack, "view2")
        )
        assert r.status_code == 201
        created = r.json()
        token = created["token"]
        listed = await c.get("/api/tokens", headers=bearer(stack, "view2"))
        assert token not in listed.text
        assert created["id"] in [t["id"] for t in listed.json()]
        other = await c.get("/api/tokens", headers=bearer(stack, "view1"))
        assert created["id"] not in [t["id"] for t in other.json()]
        # Someone else's token looks absent; its owner revokes it.
        r = await c.delete(
            f"/api/tokens/{created['id']}", headers=bearer(stack, "view1")
        )
        assert r.status_code == 404
        fresh = {"Authorization": f"Bearer {token}"}
        assert (await c.get("/api/me", headers=fresh)).status_code == 200
        r = await c.delete(
            f"/api/tokens/{created['id']}", headers=bearer(stack, "view2")
        )
        assert r.status_code == 204
        assert (await c.get("/api/me", headers=fresh)).status_code == 401
        with psycopg.connect(stack.state_dsn, autocommit=True) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pgagent_watch.api_token WHERE token_hash::text"
                " LIKE %s",
                (f"%{token.encode().hex()}%",),
            ).fetchone()
            assert row is not None and row[0] == 0


async def _route_exists(st: Stack, method: str, path: str) -> None:
    known = {(m, p) for m, p, _ in await routes(st)}
    assert (method, path) in known, f"{method.upper()} {path} is not in the API"


JOB_ACTIONS = ("run-now", "disable", "enable")


async def test_job_actions_follow_the_roles_and_are_audited(
    stack: Stack, make_job: Any
) -> None:
    for action in JOB_ACTIONS:
        await _route_exists(
            stack, "post", f"/api/servers/{{server_id}}/jobs/{{job_id}}/{action}"
        )
    job_id = make_job([samples.Step("1 quick", "SELECT 1")])
    expected = {"view1": 403, "view2": 404, "op1": 200, "admin": 200}
    async with await api(stack) as c:
        for who, status in expected.items():
            for action in JOB_ACTIONS:
                r = await c.post(
                    f"/api/servers/1/jobs/{job_id}/{action}", headers=bearer(stack, who)
                )
                got = 200 if r.status_code < 300 else r.status_code
                assert got == status, (who, action, r.status_code, r.text)
        # The operator of one server is a stranger to the other.
        r = await c.post(
            f"/api/servers/2/jobs/{job_id}/run-now", headers=bearer(stack, "op1")
        )
        assert r.status_code == 404
        entries = (
            await c.get(
                "/api/audit", params={"limit": 200}, headers=bearer(stack, "admin")
            )
        ).json()
    mine = [e for e in entries if e["target"] == f"job {job_id}"]
    done = {(e["user_name"], e["action"], e["ok"]) for e in mine}
    for action in ("job.run_now", "job.disable", "job.enable"):
        assert ("op1", action, True) in done, done
    assert ("view1", "job.run_now", False) in done, done
    assert all(e["address"] == "127.0.0.1" and e["server_id"] == 1 for e in mine)


async def test_job_health_settings_follow_the_roles_and_are_audited(
    stack: Stack, make_job: Any
) -> None:
    path = "/api/servers/{server_id}/jobs/{job_id}/health-settings"
    await _route_exists(stack, "put", path)
    job_id = make_job([samples.Step("1 quick", "SELECT 1")])
    url = f"/api/servers/1/jobs/{job_id}/health-settings"
    async with await api(stack) as c:
        current = await c.get(url, headers=bearer(stack, "view1"))
        assert current.status_code == 200, current.text
        body = current.json()
        for who, status in (("view1", 403), ("view2", 404), ("op1", 200)):
            r = await c.put(url, json=body, headers=bearer(stack, who))
            assert r.status_code == status, (who, r.text)
        entries = (
            await c.get(
                "/api/audit",
                params={"action": "job.health_settings"},
                headers=bearer(stack, "admin"),
            )
        ).json()
    done = {
        (e["user_name"], e["ok"]) for e in entries if e["target"] == f"job {job_id}"
    }
    assert done == {("view1", False), ("op1", True)}, done


async def test_subscriptions_follow_the_roles_through_the_api_and_the_socket(
    stack: Stack, make_job: Any, client_factory: Any
) -> None:
    await _route_exists(stack, "put", "/api/subscriptions")
    job_id = make_job([samples.Step("1 quick", "SELECT 1")])
    target = {"server_id": 1, "job_id": job_id}
    async with await api(stack) as c:
        ok = await c.put(
            "/api/subscriptions", json=target, headers=bearer(stack, "view1")
        )
        assert ok.status_code < 300, ok.text
        refused = await c.put(
            "/api/subscriptions", json=target, headers=bearer(stack, "view2")
        )
        assert refused.status_code in (403, 404), refused.text
        # Someone else's subscription looks absent.
        sub_id = ok.json()["id"]
        r = await c.delete(
            f"/api/subscriptions/{sub_id}", headers=bearer(stack, "view2")
        )
        assert r.status_code == 404
    sock = await client_factory(stack.url, auth={"token": stack.tokens["view2"]})
    answer = await sock.call("update_job_subscription", {**target, "subscribe": True})
    assert answer.get("code") in ("FORBIDDEN", "SERVER_NOT_FOUND", "NOT_FOUND"), answer
    mine = await client_factory(stack.url, auth={"token": stack.tokens["view1"]})
    answer = await mine.call("update_job_subscription", {**target, "subscribe": False})
    assert answer.get("ok") is True, answer
    async with await api(stack) as c:
        entries = (
            await c.get(
                "/api/audit", params={"user": "view1"}, headers=bearer(stack, "admin")
            )
        ).json()
    done = [
        (e["action"], e["address"])
        for e in entries
        if e["target"] == f"job {job_id}" and e["server_id"] == 1
    ]
    # Through the API, then through the socket.
    assert ("subscription.set", "127.0.0.1") in done, entries[:5]
    assert ("subscription.delete", "127.0.0.1") in done, entries[:5]


async def test_every_extra_socket_event_refuses_a_server_not_granted(
    stack: Stack, client_factory: Any
) -> None:
    sock = await client_factory(stack.url, auth={"token": stack.tokens["view2"]})
    for event in stack.running.service.namespace.extra_handlers:
        answer = await sock.call(event, {"sid": 1, "server_id": 1, "job_id": 1})
        assert isinstance(answer, dict) and answer.get("code"), (event, answer)
        assert not answer.get("ok"), (event, answer)


# -- the socket -----------------------------------------------------------------


async def _refused(url: str, **kw: Any) -> None:
    sio = socketio.AsyncClient(reconnection=False)
    try:
        with pytest.raises(socketio.exceptions.ConnectionError):
            await sio.connect(
                url, namespaces=["/pgagent"], transports=["websocket"], **kw
            )
    finally:
        await sio.disconnect()


async def test_a_socket_without_a_valid_session_or_token_is_refused(
    stack: Stack, client_factory: Any
) -> None:
    await _refused(stack.url)
    await _refused(stack.url, auth={"token": "pgw_wrong"})
    forged = URLSafeTimedSerializer("not the key", salt="pgw-session").dumps("x")
    await _refused(stack.url, headers={"Cookie": f"pgw_session={forged}"})
    s = await sign_in(stack, "view1")
    await s.client.aclose()
    cookie = {"Cookie": f"pgw_session={s.cookie}"}
    # A valid cookie, but from another site's page.
    await _refused(stack.url, headers={**cookie, "Origin": "http://evil.example"})
    ok = await client_factory(stack.url, headers=cookie)
    assert ok.sio.connected
    with psycopg.connect(stack.state_dsn, autocommit=True) as conn:
        conn.execute(
            "UPDATE pgagent_watch.auth_session"
            " SET last_seen_at = now() - interval '2 hours'"
        )
    await _refused(stack.url, headers=cookie)
    # The open socket of the expired session is closed too.
    await ok.wait_for(lambda c: c.events("session_ended"), "session_ended")


async def test_a_socket_gets_only_the_servers_its_user_may_see(
    stack: Stack, client_factory: Any, make_job: Any, db: Any, live_agent: Any
) -> None:
    s1 = await sign_in(stack, "view1")
    await s1.client.aclose()
    view1 = await client_factory(
        stack.url, headers={"Cookie": f"pgw_session={s1.cookie}"}
    )
    view2 = await client_factory(stack.url, auth={"token": stack.tokens["view2"]})
    refused = await view2.call("start_job_status_listener", {"sid": 1})
    assert refused["code"] == "FORBIDDEN"
    assert (await view2.call("get_job_states", {"sid": 1}))["code"] == "FORBIDDEN"
    assert (await view2.call("start_job_status_listener", {"sid": 2}))["sid"] == 2
    assert (await view1.call("start_job_status_listener", {"sid": 1}))["sid"] == 1
    rooms = stack.running.service.sio.manager.get_rooms(
        view2.sio.get_sid("/pgagent"), "/pgagent"
    )
    assert "server:1" not in rooms
    socket_id = view2.sio.get_sid("/pgagent")
    assert audit.socket_address(stack.running.service, socket_id) == "127.0.0.1"

    job_id = make_job([samples.Step("1 quick", "SELECT 1")])
    samples.run_now(db, job_id)
    await view1.wait_for(
        lambda c: any(
            u["job_id"] == job_id and u["kind"] == "run" and u["status"] == "s"
            for u in c.updates()
        ),
        "the run's end on view1",
    )
    await asyncio.sleep(0.2)
    assert not [u for u in view2.updates() if u["sid"] == 1]


async def test_sign_out_closes_the_sockets_of_that_session(
    stack: Stack, client_factory: Any
) -> None:
    s = await sign_in(stack, "view1")
    async with s:
        sock = await client_factory(
            stack.url, headers={"Cookie": f"pgw_session={s.cookie}"}
        )
        other = await client_factory(stack.url, auth={"token": stack.tokens["view1"]})
        await sock.call("start_job_status_listener", {"sid": 1})
        r = await s.client.post("/api/logout", headers={"X-CSRF-Token": s.csrf})
        assert r.status_code == 204
        await sock.wait_for(lambda c: c.events("session_ended"), "session_ended")
        # The same user's token socket stays.
        assert other.sio.connected and not other.events("session_ended")


async def test_changed_grants_and_revoked_tokens_reach_open_sockets(
    stack: Stack, client_factory: Any
) -> None:
    service = stack.running.service
    async with await api(stack) as c:
        h = bearer(stack, "admin")
        r = await c.post(
            "/api/users", json={"name": "mover", "servers": ["test", "two"]}, headers=h
        )
        user_id = r.json()["id"]
        async with service.state_pool.connection() as conn:
            token = await users.create_token(conn, user_id)
        sock = await client_factory(stack.url, auth={"token": token})
        for sid in (1, 2):
            assert (await sock.call("start_job_status_listener", {"sid": sid}))["sid"]
        socket_id = sock.sio.get_sid("/pgagent")

        def rooms() -> list[str]:
            return list(service.sio.manager.get_rooms(socket_id, "/pgagent"))

        assert {"server:1", "server:2"} <= set(rooms())
        r = await c.put(
            f"/api/users/{user_id}/grants", json={"servers": ["two"]}, headers=h
        )
        assert r.status_code == 200
        assert "server:1" not in rooms() and "server:2" in rooms()
        refused = await sock.call("start_job_status_listener", {"sid": 1})
        assert refused["code"] == "FORBIDDEN"
        r = await c.patch(f"/api/users/{user_id}", json={"disabled": True}, headers=h)
        assert r.status_code == 200
        await sock.wait_for(lambda c: c.events("session_ended"), "session_ended")


# -- secrets --------------------------------------------------------------------


async def test_no_secret_reaches_a_response_or_a_log(stack: Stack) -> None:
    await until(
        lambda: stack.running.service.servers[77].listener.status.reason,
        "the down server's failure",
    )
    s = await sign_in(stack, "admin")
    async with s:
        bodies = []
        for path in ("/healthz", "/", "/admin", "/login", "/logout", "/api/me"):
            bodies.append((await s.client.get(path)).text)
        for method, path, _ in await routes(stack):
            if method == "get":
                for sid in ("1", "2"):
                    r = await s.client.get(filled(path, sid))
                    bodies.append(r.text + str(r.headers))
        # Deliveries that fail: their errors name no secret.
        for channel in (None, "hook"):
            r = await s.client.post(
                "/api/alerts/test",
                json={"to": "x@example.org", "channel": channel},
                headers={"X-CSRF-Token": s.csrf},
            )
            assert r.status_code == 502, r.text
            bodies.append(r.text)
        # The server that is down: its error (each read waits for the pool).
        r = await s.client.get("/api/servers/77/jobs")
        assert r.status_code == 503
        bodies.append(r.text)
    for body in bodies:
        assert SECRET not in body
    assert stack.logs.lines, "no log captured"
    assert not [line for line in stack.logs.lines if SECRET in line]
    assert not [line for line in stack.logs.lines if quote(SECRET) in line]


# -- the trusted proxy header and reflected input ------------------------------


async def test_a_trusted_proxy_header_signs_in_only_from_the_trusted_proxy(
    stack: Stack, cluster: Cluster, client_factory: Any
) -> None:
    for proxies, trusted in ((["127.0.0.1/32"], True), (["10.0.0.0/8"], False)):
        settings = settings_for(
            cluster,
            state_dsn=cluster.dsn(STATE_DB),
            auth={"trusted_header": "X-Remote-User", "trusted_proxies": proxies},
        )
        async with running_service(settings) as running:
            await until(running.service.state_ready.is_set, "state ready")
            async with httpx.AsyncClient(base_url=running.url) as c:
                as_view1 = {"X-Remote-User": "view1"}
                r = await c.get("/api/me", headers=as_view1)
                if not trusted:
                    assert r.status_code == 401
                    continue
                assert r.json()["name"] == "view1"
                assert r.json()["method"] == "proxy"
                unknown = await c.get("/api/me", headers={"X-Remote-User": "ghost"})
                assert unknown.status_code == 401
                csrf = r.json()["csrf_token"]
                no_csrf = await c.post("/api/tokens", json={}, headers=as_view1)
                assert no_csrf.status_code == 403
                ok = await c.post(
                    "/api/tokens", json={}, headers={**as_view1, "X-CSRF-Token": csrf}
                )
                assert ok.status_code == 201
            sock = await client_factory(running.url, headers=as_view1)
            assert (await sock.call("start_job_status_listener", {"sid": 1}))["sid"]
            await sock.close()


async def test_what_the_sign_in_page_echoes_is_escaped(stack: Stack) -> None:
    evil = '/"><script>alert(1)</script>'
    async with await api(stack) as c:
        page = await c.get("/login", params={"next": evil})
        assert "<script>" not in page.text
        assert "&lt;script&gt;" in page.text
        r = await c.post(
            "/login",
            data={"name": "<img src=x onerror=alert(1)>", "password": "x" * 8},
        )
        assert r.status_code == 401 and "<img" not in r.text
        nul = await c.post("/login", data={"name": "ad\x00min", "password": "x"})
        assert nul.status_code == 401
        r = await c.post(
            "/api/tokens", json={"name": "a\x00b"}, headers=bearer(stack, "view1")
        )
        assert r.status_code == 422


@pytest.mark.browser
async def test_a_browser_signs_in_reaches_the_live_page_and_signs_out(
    stack: Stack,
) -> None:
    import shutil

    from playwright.async_api import async_playwright, expect

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=shutil.which("chromium"),
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            page = await browser.new_page()
            errors: list[str] = []
            page.on(
                "console",
                lambda m: errors.append(m.text) if m.type == "error" else None,
            )
            await page.goto(stack.url + "/")
            assert page.url.endswith("/login")
            await page.fill("input[name=name]", "view1")
            await page.fill("input[name=password]", PASSWORD)
            await page.click("button[type=submit]")
            await page.wait_for_url(stack.url + "/")
            # The socket is opened with the session cookie, from our own origin.
            await expect(page.locator("#live")).to_have_text("live", timeout=30_000)
            cookies = await page.context.cookies()
            session = next(c for c in cookies if c["name"] == "pgw_session")
            assert session["httpOnly"] and session["sameSite"] == "Lax"
            assert "pgw_session" not in await page.evaluate("() => document.cookie")
            await page.goto(stack.url + "/logout")
            await page.click("button[type=submit]")
            await page.wait_for_url(stack.url + "/login")
            await page.goto(stack.url + "/")
            assert page.url.endswith("/login")
            assert not [e for e in errors if "Content Security Policy" in e]
        finally:
            await browser.close()


# -- the fuzz run (last: it may change or delete anything) ------------------


@pytest.mark.slow
async def test_a_fuzz_run_from_the_openapi_description_finds_no_500_and_no_leak(
    stack: Stack, cluster: Cluster, tmp_path: Any
) -> None:
    # The same state and servers, but not the one that is down: each read of
    # it waits for its pool's timeout (the secrets test covers it).
    settings = settings_for(
        cluster,
        servers=[
            {"name": "test", "dsn": cluster.dsn()},
            {"name": "two", "dsn": cluster.dsn(SECOND_DB), "password": SECRET},
        ],
        state_dsn=cluster.dsn(STATE_DB),
    )
    async with running_service(settings) as running:
        await until(running.service.state_ready.is_set, "state ready")
        await _fuzz(stack, running, tmp_path)


async def _fuzz(stack: Stack, running: Running, tmp_path: Any) -> None:
    # The fuzzer revokes tokens by small ids: its own must not be one of them.
    async with stack.running.service.state_pool.connection() as conn:
        await conn.execute("SELECT setval('pgagent_watch.api_token_id_seq', 987654)")
        token = await users.create_token(conn, stack.ids["fuzzer"], "fuzz")
    # 503 is the right answer for a server that cannot be read now.
    config = tmp_path / "schemathesis.toml"
    # 502 is the documented answer of a test mail the SMTP server refused.
    config.write_text(
        '[checks.not_a_server_error]\nexpected-statuses = ["1xx", "2xx", "3xx",'
        ' "4xx", "503"]\n\n[[operations]]\ninclude-path = "/api/alerts/test"\n'
        'checks.not_a_server_error.expected-statuses = ["1xx", "2xx", "3xx",'
        ' "4xx", "502", "503"]\n'
    )
    proc = await asyncio.create_subprocess_exec(
        "schemathesis",
        "--config-file",
        str(config),
        "run",
        f"{running.url}/api/openapi.json",
        "--header",
        f"Authorization: Bearer {token}",
        "--checks",
        "not_a_server_error",
        "--phases",
        "examples,coverage,fuzzing",
        "--max-examples",
        "25",
        "--workers",
        "1",
        "--seed",
        "7",
        "--request-timeout",
        "20",
        "--no-color",
        "--report",
        "har",
        "--report-dir",
        str(tmp_path),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={"PATH": _venv_path(), "HOME": str(tmp_path)},
        # Its cache (.schemathesis/) goes there too, not into the checkout.
        cwd=str(tmp_path),
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 240)
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text[-6000:]
    assert "Authentication failed" not in text, text[-3000:]
    reports = [p for p in tmp_path.rglob("har-*") if p.is_file()]
    assert reports
    for har in reports:
        assert SECRET not in har.read_text(errors="replace")


def _venv_path() -> str:
    import os
    import sys
    from pathlib import Path

    return f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
