"""The socket protocol: answers, errors with stable codes, and tokens."""

from __future__ import annotations

from typing import Any

import httpx
import psycopg
import pytest
import socketio

from pgagent_watch import users

from .fix_cluster import Running, running_service, settings_for


async def test_start_joins_the_room_and_answers(
    watch: Running, client_factory: Any
) -> None:
    client = await client_factory(watch.url)
    answer = await client.call("start_job_status_listener", {"sid": 1})
    assert answer == {"sid": 1, "state": "connected", "reason": None}
    assert client.events("connected")
    assert client.events("job_status_listener_started") == [answer]


async def test_stop_leaves_the_room(watch: Running, client_factory: Any) -> None:
    client = await client_factory(watch.url)
    await client.call("start_job_status_listener", {"sid": 1})
    assert await client.call("stop_job_status_listener", {"sid": 1}) == {"sid": 1}
    rooms = watch.service.sio.manager.get_rooms(
        client.sio.get_sid("/pgagent"), "/pgagent"
    )
    assert "server:1" not in rooms


async def test_keep_alive_is_answered(watch: Running, client_factory: Any) -> None:
    client = await client_factory(watch.url)
    answer = await client.call("keep_alive")
    assert "time" in answer


BAD = [
    ("start_job_status_listener", None, "BAD_REQUEST"),
    ("start_job_status_listener", {}, "NO_SERVER_ID"),
    ("start_job_status_listener", {"sid": None}, "NO_SERVER_ID"),
    ("start_job_status_listener", {"sid": "1"}, "BAD_REQUEST"),
    ("start_job_status_listener", {"sid": 1.5}, "BAD_REQUEST"),
    ("start_job_status_listener", {"sid": True}, "BAD_REQUEST"),
    ("start_job_status_listener", {"sid": -1}, "BAD_REQUEST"),
    ("start_job_status_listener", {"sid": 2**63}, "BAD_REQUEST"),
    ("start_job_status_listener", {"sid": 999}, "SERVER_NOT_FOUND"),
    ("start_job_status_listener", [1], "BAD_REQUEST"),
    ("start_job_status_listener", "1; DROP TABLE x", "BAD_REQUEST"),
    ("stop_job_status_listener", {"sid": "x"}, "BAD_REQUEST"),
    ("get_job_states", {"sid": 42}, "SERVER_NOT_FOUND"),
    ("get_job_states", {"sid": "ünïcødé"}, "BAD_REQUEST"),
    ("no_such_event", {"sid": 1}, "UNKNOWN_EVENT"),
]


@pytest.mark.parametrize(("event", "data", "code"), BAD)
async def test_bad_input_gets_a_stable_code_and_the_connection_stays_up(
    watch: Running, client_factory: Any, event: str, data: Any, code: str
) -> None:
    client = await client_factory(watch.url)
    answer = await client.call(event, data)
    assert answer["code"] == code
    assert answer["error"]
    assert client.events("job_status_listener_error")[-1]["code"] == code
    # Still connected and still useful.
    assert (await client.call("start_job_status_listener", {"sid": 1}))["sid"] == 1


async def test_the_api_lists_servers_and_jobs(watch: Running) -> None:
    async with httpx.AsyncClient(base_url=watch.url) as http:
        servers = (await http.get("/api/servers")).json()
        assert servers[0]["id"] == 1 and servers[0]["name"] == "test"
        jobs = await http.get("/api/servers/1/jobs")
        assert jobs.status_code == 200 and isinstance(jobs.json(), list)
        for bad in ("0", "-1", "abc", "99999999999", "1%20OR%201=1"):
            assert (await http.get(f"/api/servers/{bad}/jobs")).status_code == 422
        assert (await http.get("/api/servers/7/jobs")).status_code == 404
        health = (await http.get("/healthz")).json()
        assert health["servers"]["1"]["state"] == "connected"


async def test_once_users_exist_a_token_is_required(
    cluster: Any, client_factory: Any
) -> None:
    # A database of its own: users created here must not leak into other tests.
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS tokens WITH (FORCE)")
        conn.execute("CREATE DATABASE tokens")
    settings = settings_for(cluster, state_dsn=cluster.dsn("tokens"))
    async with running_service(settings) as running:
        async with running.service.state_pool.connection() as conn:
            user_id = await users.create_user(
                conn, "ops", "viewer", email="ops@example.com"
            )
            token = await users.create_token(conn, user_id, "script")
        running.service._users_exist = (0.0, False)
        async with httpx.AsyncClient(base_url=running.url) as http:
            assert (await http.get("/api/servers")).status_code == 401
            bad = {"Authorization": "Bearer pgw_forged"}
            assert (await http.get("/api/servers", headers=bad)).status_code == 401
            good = {"Authorization": f"Bearer {token}"}
            assert (await http.get("/api/servers", headers=good)).status_code == 200
        with pytest.raises(socketio.exceptions.ConnectionError):
            await client_factory(running.url)
        client = await client_factory(running.url, auth={"token": token})
        assert (await client.call("start_job_status_listener", {"sid": 1}))["sid"] == 1
        async with running.service.state_pool.connection() as conn:
            await conn.execute("UPDATE pgagent_watch.api_token SET revoked_at = now()")
        with pytest.raises(socketio.exceptions.ConnectionError):
            await client_factory(running.url, auth={"token": token})


async def test_the_default_namespace_is_not_open(watch: Running) -> None:
    sio = socketio.AsyncClient(reconnection=False)
    try:
        with pytest.raises(socketio.exceptions.ConnectionError):
            await sio.connect(
                watch.url, namespaces=["/"], transports=["websocket"], wait_timeout=10
            )
    finally:
        await sio.disconnect()
        http = getattr(sio.eio, "http", None)
        if http is not None:
            await http.close()


async def test_bodies_are_bounded_and_bad_json_is_never_a_500(watch: Running) -> None:
    async with httpx.AsyncClient(base_url=watch.url) as http:
        big = await http.put(
            "/api/subscriptions",
            content=b"{" + b" " * (2 * 1024 * 1024) + b"}",
            headers={"Content-Type": "application/json"},
        )
        assert big.status_code == 413
        for body in (
            b'{"server_id": NaN}',
            b'{"server_id": "\\ud800"}',
            b'{"\\ud800": 1}',
        ):
            answer = await http.put(
                "/api/subscriptions",
                content=body,
                headers={"Content-Type": "application/json"},
            )
            assert 400 <= answer.status_code < 500, (body, answer.status_code)
            assert "ud800" not in answer.text
