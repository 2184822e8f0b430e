"""The demo's mail catcher: an SMTP server (aiosmtpd) in the service's loop.

It keeps the last messages in memory so that the page can show the real
digests without anything configured. Never for production: no TLS, no login.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import deque
from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any, TypedDict

from aiosmtpd.smtp import SMTP, Envelope, Session

logger = logging.getLogger("pgagent_watch.alerts")


class CaughtMail(TypedDict):
    id: int
    received_at: str
    mail_from: str
    to: list[str]
    subject: str
    text: str
    html: str


def _part(mail: EmailMessage, subtype: str) -> str:
    part = mail.get_body(preferencelist=(subtype,))
    if part is None:
        return ""
    content = part.get_content()
    return content if isinstance(content, str) else ""


class MailCatcher:
    """Keeps the last ``keep`` messages it receives."""

    def __init__(self, keep: int = 200) -> None:
        self.mails: deque[CaughtMail] = deque(maxlen=keep)
        self._ids = itertools.count(1)
        self._server: asyncio.Server | None = None
        self.host = "127.0.0.1"
        self.port = 0

    async def handle_DATA(  # aiosmtpd calls it by this name
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        raw = envelope.original_content or envelope.content or b""
        mail = message_from_bytes(
            raw if isinstance(raw, bytes) else raw.encode(), policy=policy.default
        )
        assert isinstance(mail, EmailMessage)
        self.mails.append(
            {
                "id": next(self._ids),
                "received_at": datetime.now(UTC).isoformat(),
                "mail_from": envelope.mail_from or "",
                "to": list(envelope.rcpt_tos),
                "subject": str(mail.get("Subject", "")),
                "text": _part(mail, "plain"),
                "html": _part(mail, "html"),
            }
        )
        return "250 OK caught"

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Listen; return the port (a free one when ``port`` is 0)."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: SMTP(self, hostname="pgagent-watch-demo", enable_SMTPUTF8=True),
            host=host,
            port=port,
        )
        self.host = host
        self.port = int(self._server.sockets[0].getsockname()[1])
        logger.info("mail catcher listening on %s:%d", host, self.port)
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    def list(self) -> list[dict[str, Any]]:
        return [dict(m) for m in reversed(self.mails)]
