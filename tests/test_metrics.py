"""/metrics: what an operator scrapes, against the real listener and push."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pgagent_watch import samples
from pgagent_watch.samples import Step

from .fix_cluster import (
    run_updates,
    running_service,
    settings_for,
    until,
    wait_connected,
)


@pytest.fixture
async def client_factory(client_factory):
    """Clients that do not reconnect: the test stops the service under them."""

    async def make(url: str, **kw):
        client = await client_factory(url, **kw)
        client.sio.reconnection = False
        return client

    return make


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def test_metrics_export_listener_events_deliveries_clients_and_queue_usage(
    cluster, db, client_factory, make_job, live_agent
):
    settings = settings_for(cluster, metrics={"interval": 0.2})
    async with running_service(settings) as watch:
        await wait_connected(watch)
        client = await client_factory(watch.url)
        await client.call("start_job_status_listener", {"sid": 1})
        job_id = make_job([Step("ok", "SELECT 1")])
        samples.run_now(db, job_id)
        await client.wait_for(
            lambda c: ("run", "s") in run_updates(c.updates(), job_id), "the run"
        )
        metrics = watch.service.metrics

        async def depth(service) -> float:
            return 7.0

        # How the alerts component plugs in its own outbox figure.
        metrics.sources["outbox_depth"] = depth
        await until(lambda: metrics.values.get("outbox_depth") == 7.0, "a poll")
        async with httpx.AsyncClient(base_url=watch.url) as http:
            response = await http.get("/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        got = _samples(response.text)
        server = (("server", "test"),)
        assert (
            got[
                (
                    "pgagent_watch_listener_state",
                    (("server", "test"), ("state", "connected")),
                )
            ]
            == 1
        )
        assert (
            got[
                (
                    "pgagent_watch_listener_state",
                    (("server", "test"), ("state", "standby")),
                )
            ]
            == 0
        )
        assert got[("pgagent_watch_listener_lag_seconds", server)] >= 0
        assert ("pgagent_watch_listener_reconnects_total", server) in got
        assert (
            got[("pgagent_watch_events_total", (("kind", "run"), ("server", "test")))]
            >= 2
        )
        assert got[("pgagent_watch_push_frames_total", ())] >= 1
        assert got[("pgagent_watch_push_events_total", ())] >= 4
        assert got[("pgagent_watch_clients", ())] == 1
        assert got[("pgagent_watch_clients_dropped_total", ())] == 0
        assert ("pgagent_watch_notification_queue_usage", server) in got
        assert got[("pgagent_watch_outbox_depth", ())] == 7.0
        assert cluster.dsn() not in response.text
