"""Alerts wired into one Service: engine, dispatcher, channels, mail catcher."""

from __future__ import annotations

import logging
import secrets
from typing import TYPE_CHECKING, Any

from .. import audit
from ..access import Principal
from ..config import Settings
from . import subscriptions
from .channels import AppriseChannel, Channel, DeliveryError, Message, SmtpChannel
from .digest import html_body, text_body
from .dispatcher import Dispatcher
from .engine import AlertEngine
from .mailcatcher import MailCatcher
from .subscriptions import Subscription, SubscriptionError

if TYPE_CHECKING:
    from ..service import Service

logger = logging.getLogger("pgagent_watch.alerts")


class AlertService:
    """Everything alerts need in one process; ``service.alerts``."""

    def __init__(self, service: Service) -> None:
        self.service = service
        settings = service.settings
        self.channels = channels_for(settings)
        smtp = self.channels[subscriptions.EMAIL]
        assert isinstance(smtp, SmtpChannel)
        self.smtp = smtp
        # The demo's catcher, unless SMTP_HOST (or [smtp] host) names a server.
        self.catcher = (
            MailCatcher()
            if settings.alerts.mail_catcher and not self.smtp.configured
            else None
        )
        self.engine = AlertEngine(service)
        self.dispatcher = Dispatcher(
            service.state_pool,
            settings.alerts,
            self.channels,
            public_url=self.public_url(),
            ready=service.state_ready,
        )
        self.engine.on_written.append(self.dispatcher.poke)
        service.hub.add(self.engine)
        service.namespace.extra_handlers["update_job_subscription"] = (
            self.on_update_job_subscription
        )

    def public_url(self) -> str:
        web = self.service.settings.web
        if web.public_url:
            return web.public_url
        return f"http://{web.host}:{web.port}"

    @property
    def channel_names(self) -> list[str]:
        return [n for n in self.channels if n != subscriptions.EMAIL]

    async def start(self) -> None:
        """Start the catcher (demo, no SMTP_HOST), the engine and the dispatcher."""
        if self.catcher is not None:
            port = await self.catcher.start()
            self.smtp.host, self.smtp.port, self.smtp.security = (
                "127.0.0.1",
                port,
                "plain",
            )
        if self.service.settings.alerts.enabled:
            self.service.spawn(self.engine.run(), "alert-engine")
            self.service.spawn(self.dispatcher.run(), "alert-dispatcher")

    async def stop(self) -> None:
        if self.catcher is not None:
            await self.catcher.stop()

    async def send_test(self, to: str | None, channel: str | None = None) -> str:
        """Send one test message; return the server's answer.

        Raises DeliveryError (with the server's answer) or SubscriptionError
        for an unknown channel.
        """
        return await send_test(self.channels, to, channel, self.dispatcher.domain)

    async def on_update_job_subscription(
        self, sid: str, principal: Principal, data: Any
    ) -> dict[str, Any]:
        """``update_job_subscription {server_id, job_id, subscribe, statuses?}``."""
        from ..push import BadRequest

        server_id = data.get("server_id") if isinstance(data, dict) else None
        sid_for_error = server_id if isinstance(server_id, int) else None
        try:
            if not isinstance(data, dict):
                raise SubscriptionError("BAD_REQUEST", "expected an object")
            subscribe = data.get("subscribe", True)
            if not isinstance(subscribe, bool):
                raise SubscriptionError(
                    "BAD_REQUEST", "'subscribe' must be true or false"
                )
            server_id, job_id = check_target(data.get("server_id"), data.get("job_id"))
            address = audit.socket_address(self.service, sid)
            if subscribe:
                sub = await self.subscribe(
                    principal,
                    server_id,
                    job_id,
                    data.get("statuses"),
                    data.get("channel"),
                    address=address,
                )
                return {"ok": True, "subscription": sub}
            await self.unsubscribe(
                principal, server_id, job_id, data.get("channel"), address=address
            )
            return {"ok": True, "subscription": None}
        except SubscriptionError as exc:
            raise BadRequest(exc.code, str(exc), sid_for_error) from None

    def _user(self, principal: Principal) -> int:
        if principal.user_id is None:
            raise SubscriptionError(
                "FORBIDDEN",
                "subscriptions belong to a user: sign in (or create a user first)",
            )
        return principal.user_id

    async def subscribe(
        self,
        principal: Principal,
        server_id: int,
        job_id: int | None,
        statuses: Any,
        channel: Any,
        *,
        address: str | None = None,
    ) -> Subscription:
        """Create or replace a subscription; raise SubscriptionError with a code.

        Recorded in the audit trail with the client ``address``.
        """
        user_id = self._user(principal)
        words = subscriptions.check_statuses(statuses)
        chosen = subscriptions.check_channel(
            channel, self.channel_names, principal.email
        )
        await self._check_visible(principal, server_id, job_id)
        async with self.service.state_pool.connection(timeout=10) as conn:
            sub = await subscriptions.upsert(
                conn, user_id, server_id, job_id, words, chosen
            )
        await audit.record(
            self.service,
            principal,
            "subscription.set",
            address=address,
            server_id=server_id,
            target=f"job {job_id}" if job_id is not None else "every job",
            detail={"statuses": words, "channel": chosen},
        )
        return sub

    async def unsubscribe(
        self,
        principal: Principal,
        server_id: int,
        job_id: int | None,
        channel: Any,
        *,
        address: str | None = None,
    ) -> int:
        user_id = self._user(principal)
        name = channel if isinstance(channel, str) else subscriptions.EMAIL
        async with self.service.state_pool.connection(timeout=10) as conn:
            deleted = await subscriptions.delete_target(
                conn, user_id, server_id, job_id, name
            )
        if deleted:
            await audit.record(
                self.service,
                principal,
                "subscription.delete",
                address=address,
                server_id=server_id,
                target=f"job {job_id}" if job_id is not None else "every job",
                detail={"channel": name},
            )
        return deleted

    async def _check_visible(
        self, principal: Principal, server_id: int, job_id: int | None
    ) -> None:
        if server_id not in self.service.servers or not principal.can_see(server_id):
            raise SubscriptionError(
                "SERVER_NOT_FOUND", f"no server with id {server_id}"
            )
        if job_id is None:
            return
        server = self.service.servers[server_id]
        try:
            async with server.pool.connection(timeout=5) as conn:
                exists = await subscriptions.job_exists(conn, job_id)
        except Exception as exc:
            logger.warning("job check on %s: %s", server.config.name, exc)
            raise SubscriptionError(
                "SERVER_UNAVAILABLE", "the server cannot be read now"
            ) from None
        if not exists:
            raise SubscriptionError(
                "JOB_NOT_FOUND", f"no job with id {job_id} on server {server_id}"
            )

    async def outbox_depth(self) -> dict[str, int]:
        """Outbox rows by state, for /metrics (every state present, 0 if none)."""
        counts = dict.fromkeys(("pending", "sending", "sent", "failed", "dead"), 0)
        async with self.service.state_pool.connection(timeout=5) as conn:
            cur = await conn.execute(
                "SELECT state, count(*) FROM pgagent_watch.alert GROUP BY state"
            )
            for state, count in await cur.fetchall():
                counts[state] = int(count)
        return counts

    def health(self) -> dict[str, Any]:
        return {
            "servers": self.engine.health(),
            "dispatcher": self.dispatcher.health(),
            "smtp": self.smtp.describe() if self.smtp.configured else None,
            "mail_catcher": self.catcher is not None,
        }


MAX_ID = 2**31 - 1


def channels_for(settings: Settings) -> dict[str, Channel]:
    """``email`` (SMTP) and every configured Apprise channel, by name."""
    channels: dict[str, Channel] = {subscriptions.EMAIL: SmtpChannel(settings.smtp)}
    for name, config in settings.alerts.channels.items():
        channels[name] = AppriseChannel(name, config)
    return channels


def test_message(domain: str) -> Message:
    """A message that says only that alerts reach their reader."""
    line = "This is a test message from pgagent-watch: alerts reach you."
    return Message(
        subject="pgagent-watch test message",
        text=text_body([], 0) + line + "\n",
        html=html_body([], 0).replace("</body>", f"<p>{line}</p></body>"),
        message_id=f"<test-{secrets.token_hex(8)}@{domain}>",
    )


async def send_test(
    channels: dict[str, Channel], to: str | None, channel: str | None, domain: str
) -> str:
    """Send one test message; return the server's answer.

    Raises DeliveryError (with the server's answer) or SubscriptionError
    for an unknown channel.
    """
    name = channel or subscriptions.EMAIL
    chosen = channels.get(name)
    if chosen is None:
        known = ", ".join(channels)
        raise SubscriptionError(
            "BAD_REQUEST", f"unknown channel {name[:40]!r}: one of {known}"
        )
    if name == subscriptions.EMAIL and not to:
        raise DeliveryError("give an address to send the test to", permanent=True)
    return await chosen.send(to or name, test_message(domain))


def check_target(server_id: Any, job_id: Any) -> tuple[int, int | None]:
    """Validate ids the way the socket protocol does (ints, in range)."""
    for name, value, optional in (
        ("server_id", server_id, False),
        ("job_id", job_id, True),
    ):
        if value is None and optional:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise SubscriptionError("BAD_REQUEST", f"'{name}' must be an integer")
        if not 1 <= value <= MAX_ID:
            raise SubscriptionError("BAD_REQUEST", f"'{name}' is out of range")
    return server_id, job_id
