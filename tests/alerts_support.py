"""Helpers for the alert tests: a real SMTP server (aiosmtpd) in the test
process, users with tokens, failures written the way pgAgent writes them."""

from __future__ import annotations

import asyncio
import email
import itertools
import secrets
from email import policy
from email.message import EmailMessage
from typing import Any

import psycopg
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, Session

from pgagent_watch import users
from pgagent_watch.cluster import Cluster

from .fix_cluster import settings_for, unique, until, wait_connected

_n = itertools.count(1)


class Inbox:
    """An aiosmtpd server that keeps every message, parsed by the std library."""

    def __init__(self) -> None:
        self.mails: list[EmailMessage] = []
        self.envelopes: list[list[str]] = []
        self.reject: set[str] = set()
        self.login: tuple[str, str] | None = None
        # Seconds to wait before answering EHLO: a slow server.
        self.delay = 0.0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def handle_RCPT(  # aiosmtpd calls it by this name
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        if address in self.reject:
            return "550 5.1.1 no such mailbox here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_EHLO(  # aiosmtpd calls it by this name
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        if self.delay:
            await asyncio.sleep(self.delay)
        session.host_name = hostname
        return responses

    async def handle_DATA(  # aiosmtpd calls it by this name
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        raw = envelope.original_content or b""
        mail = email.message_from_bytes(raw, policy=policy.default)
        assert isinstance(mail, EmailMessage)
        self.mails.append(mail)
        self.envelopes.append(list(envelope.rcpt_tos))
        return "250 2.0.0 queued as test"

    def _auth(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        mechanism: str,
        data: Any,
    ) -> AuthResult:
        ok = (
            self.login is not None
            and (
                data.login.decode(),
                data.password.decode(),
            )
            == self.login
        )
        return AuthResult(success=ok, handled=False)

    async def start(self, port: int = 0, *, auth: bool = False) -> Inbox:
        loop = asyncio.get_running_loop()

        def factory() -> SMTP:
            if auth:
                return SMTP(
                    self,
                    enable_SMTPUTF8=True,
                    authenticator=self._auth,
                    auth_require_tls=False,
                )
            return SMTP(self, enable_SMTPUTF8=True)

        self._server = await loop.create_server(factory, "127.0.0.1", port)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    def to(self, address: str) -> list[EmailMessage]:
        pairs = zip(self.mails, self.envelopes, strict=True)
        return [m for m, rcpt in pairs if address in rcpt]


def text_of(mail: EmailMessage) -> str:
    part = mail.get_body(preferencelist=("plain",))
    assert part is not None
    return str(part.get_content())


def html_of(mail: EmailMessage) -> str:
    part = mail.get_body(preferencelist=("html",))
    assert part is not None
    return str(part.get_content())


def alert_ids(mail: EmailMessage) -> list[int]:
    return [int(i) for i in str(mail["X-PgAgent-Watch-Alerts"]).split(",")]


def make_user(
    db: psycopg.Connection, email_address: str | None = None, role: str = "operator"
) -> tuple[int, str, str]:
    """A user with an address and an API token: (id, address, token)."""
    name = unique("user")
    address = email_address or f"{name}@example.test"

    row = db.execute(
        "INSERT INTO pgagent_watch.app_user (name, email, role) VALUES (%s, %s, %s)"
        " RETURNING id",
        (name, address, role),
    ).fetchone()
    assert row is not None
    user_id = int(row[0])
    db.execute(
        "INSERT INTO pgagent_watch.user_grant (user_id, server_name) VALUES (%s, '*')",
        (user_id,),
    )
    token = users.TOKEN_PREFIX + secrets.token_urlsafe(32)
    db.execute(
        "INSERT INTO pgagent_watch.api_token (user_id, token_hash) VALUES (%s, %s)",
        (user_id, users.token_hash(token)),
    )
    return user_id, address, token


def subscribe(
    db: psycopg.Connection,
    user_id: int,
    job_id: int | None,
    statuses: list[str] | None = None,
    channel: str = "email",
    server_id: int = 1,
) -> None:
    db.execute(
        "INSERT INTO pgagent_watch.subscription (user_id, server_id, job_id,"
        " statuses, channel) VALUES (%s, %s, %s, %s, %s)",
        (user_id, server_id, job_id, statuses or ["failed"], channel),
    )


def write_failures(
    db: psycopg.Connection, job_id: int, count: int, output: str = "boom"
) -> list[int]:
    """Write ``count`` failed runs as pgAgent does: runs and step runs in 'r',
    then the step runs and runs updated to 'f'. Returns the run ids."""
    row = db.execute(
        "SELECT jstid FROM pgagent.pga_jobstep WHERE jstjobid = %s ORDER BY jstname"
        " LIMIT 1",
        (job_id,),
    ).fetchone()
    assert row is not None
    step_id = row[0]
    with db.transaction():
        run_ids = [
            r[0]
            for r in db.execute(
                "INSERT INTO pgagent.pga_joblog (jlgjobid, jlgstatus)"
                " SELECT %s, 'r' FROM generate_series(1, %s) RETURNING jlgid",
                (job_id, count),
            ).fetchall()
        ]
        db.execute(
            "INSERT INTO pgagent.pga_jobsteplog (jsljlgid, jsljstid, jslstatus)"
            " SELECT unnest(%s::int[]), %s, 'r'",
            (run_ids, step_id),
        )
        db.execute(
            "UPDATE pgagent.pga_jobsteplog SET jslstatus = 'f', jslresult = 1,"
            " jslduration = '1 second', jsloutput = %s WHERE jsljlgid = ANY(%s)",
            (output, run_ids),
        )
        db.execute(
            "UPDATE pgagent.pga_joblog SET jlgstatus = 'f', jlgduration = '2 seconds'"
            " WHERE jlgid = ANY(%s)",
            (run_ids,),
        )
    return run_ids


def alert_settings(cluster: Cluster, inbox_port: int | None, **alerts: Any) -> Any:
    """Test settings: short windows and backoffs, SMTP at the test inbox."""
    base: dict[str, Any] = {
        "window": 2,
        "batch": 250,
        "settle": 0.3,
        "poll_interval": 0.5,
        "backoff_initial": 0.2,
        "backoff_max": 1,
        "claim_timeout": 30,
    }
    base.update(alerts)
    smtp: dict[str, Any] = {"timeout": 5}
    if inbox_port is not None:
        smtp.update(host="127.0.0.1", port=inbox_port, security="plain")
    return settings_for(cluster, smtp=smtp, alerts=base)


def outbox(db: psycopg.Connection, recipient: str) -> list[tuple[Any, ...]]:
    return db.execute(
        "SELECT id, state, attempts, last_error, run_id FROM pgagent_watch.alert"
        " WHERE recipient = %s ORDER BY id",
        (recipient,),
    ).fetchall()


async def eventually(check: Any, what: str, limit: float = 30.0) -> Any:
    """Await ``check()`` until it returns something true, with a limit."""
    deadline = asyncio.get_running_loop().time() + limit
    while True:
        value = await check()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {limit} s waiting for {what}")
        await asyncio.sleep(0.1)


async def alerts_ready(running: Any) -> None:
    """The listener connected, the state schema there, the alert cursor made."""
    await wait_connected(running)
    engine = running.service.alerts.engine
    await until(lambda: 1 in engine.started, "the alert cursor", limit=30)
