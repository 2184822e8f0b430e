"""The alert API and socket event: own subscriptions only, clear errors."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from pgagent_watch.samples import Step

from .alerts_support import alert_settings, alerts_ready, eventually, make_user
from .fix_cluster import running_service

pytestmark = pytest.mark.usefixtures("forget_users")


async def test_subscriptions_are_per_user_and_bad_input_gets_a_clear_error(
    cluster, db, make_job, client_factory
):
    job_id = make_job([Step("1 ok", "SELECT 1")], enabled=False)
    async with running_service(alert_settings(cluster, None)) as running:
        await alerts_ready(running)
        async with httpx.AsyncClient(base_url=running.url) as http:
            # No user yet: the anonymous administrator cannot subscribe. (The
            # page's requests carry the CSRF token /api/me gives.)
            csrf = {"X-CSRF-Token": (await http.get("/api/me")).json()["csrf_token"]}
            anon = await http.put(
                "/api/subscriptions", json={"server_id": 1}, headers=csrf
            )
            assert anon.status_code == 403
            assert "user" in anon.json()["detail"]["error"]
            nobody = await client_factory(running.url)
            refused = await nobody.call(
                "update_job_subscription", {"server_id": 1, "job_id": job_id}
            )
            assert refused["code"] == "FORBIDDEN"
            await nobody.close()

            _, _, alice = make_user(db)
            _, _, bob = make_user(db)
            a = {"Authorization": f"Bearer {alice}"}
            b = {"Authorization": f"Bearer {bob}"}

            async def put(body: dict[str, Any], who: dict[str, str] = a) -> Any:
                return await http.put("/api/subscriptions", json=body, headers=who)

            r = await put({"server_id": 1, "job_id": job_id, "statuses": ["f", "d"]})
            assert r.status_code == 200
            assert r.json()["statuses"] == ["failed", "aborted"]
            assert r.json()["channel"] == "email"
            again = await put({"server_id": 1, "job_id": job_id, "statuses": ["i"]})
            assert again.json()["id"] == r.json()["id"]
            assert again.json()["statuses"] == ["failed"]
            every = await put({"server_id": 1, "job_id": None, "statuses": ["stuck"]})
            assert every.json()["job_id"] is None

            assert (await put({"server_id": 99})).status_code == 404
            missing = await put({"server_id": 1, "job_id": 2_000_000_000})
            assert missing.status_code == 404
            assert missing.json()["detail"]["code"] == "JOB_NOT_FOUND"
            bad = await put({"server_id": 1, "statuses": ["x"]})
            assert bad.status_code == 422
            assert "failed" in bad.json()["detail"]["error"]
            assert (await put({"server_id": 1, "statuses": []})).status_code == 422
            assert (await put({"server_id": 1, "channel": "nope"})).status_code == 422
            assert (await put({"server_id": "one"})).status_code == 422
            assert (await put({"server_id": 1, "job_id": -4})).status_code == 422

            mine = (await http.get("/api/subscriptions", headers=a)).json()
            assert sorted(s["id"] for s in mine) == sorted(
                [r.json()["id"], every.json()["id"]]
            )
            assert (await http.get("/api/subscriptions", headers=b)).json() == []
            # Bob cannot delete Alice's subscription.
            gone = await http.delete(f"/api/subscriptions/{r.json()['id']}", headers=b)
            assert gone.status_code == 404
            ok = await http.delete(f"/api/subscriptions/{r.json()['id']}", headers=a)
            assert ok.status_code == 204

            client = await client_factory(running.url, auth={"token": alice})
            answer = await client.call(
                "update_job_subscription",
                {"server_id": 1, "job_id": job_id, "subscribe": True},
            )
            assert answer["ok"] is True
            assert answer["subscription"]["job_id"] == job_id
            for data, code in [
                ({"server_id": 1, "job_id": 2_000_000_000}, "JOB_NOT_FOUND"),
                ({"server_id": 42, "job_id": job_id}, "SERVER_NOT_FOUND"),
                ({"server_id": 1, "job_id": job_id, "statuses": ["z"]}, "BAD_REQUEST"),
                ({"server_id": 1, "job_id": "x"}, "BAD_REQUEST"),
                ("nonsense", "BAD_REQUEST"),
            ]:
                error = await client.call("update_job_subscription", data)
                assert error["code"] == code, (data, error)
            off = await client.call(
                "update_job_subscription",
                {"server_id": 1, "job_id": job_id, "subscribe": False},
            )
            assert off == {"ok": True, "subscription": None}

            # A job deleted in pgAgent takes its subscriptions with it.
            await client.call(
                "update_job_subscription",
                {"server_id": 1, "job_id": job_id, "subscribe": True},
            )
            db.execute(
                "UPDATE pgagent.pga_job SET jobname = jobname || '-renamed'"
                " WHERE jobid = %s",
                (job_id,),
            )
            # A renamed job keeps its subscriptions.
            engine = running.service.alerts.engine
            seen = engine.written
            await asyncio.sleep(1)
            kept = (await http.get("/api/subscriptions", headers=a)).json()
            assert job_id in [s["job_id"] for s in kept] and engine.written == seen
            db.execute("DELETE FROM pgagent.pga_job WHERE jobid = %s", (job_id,))

            async def job_gone() -> bool:
                got = (await http.get("/api/subscriptions", headers=a)).json()
                return not [s for s in got if s["job_id"] == job_id]

            await eventually(job_gone, "the deleted job's subscription removed")
            # The every-job subscription stays.
            await client.close()
            left = (await http.get("/api/subscriptions", headers=a)).json()
            assert [s["job_id"] for s in left] == [None]
            # The mail catcher is a demo thing.
            assert (await http.get("/api/mailcatcher", headers=a)).status_code == 404
