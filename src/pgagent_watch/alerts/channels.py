"""Delivery: e-mail over SMTP (aiosmtplib) and everything else through Apprise.

Each ``send`` makes a fresh connection with a timeout and returns the
server's answer; it raises DeliveryError, whose ``permanent`` flag tells the
dispatcher whether trying again can help (a refused recipient or login
cannot; a server that is down can).
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass, field
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import formatdate, parseaddr
from typing import Any, Protocol
from urllib.parse import quote, urlsplit, urlunsplit

import aiosmtplib
import apprise

from ..config import ChannelConfig, SmtpSettings
from ..errors import PgAgentWatchError

logger = logging.getLogger("pgagent_watch.alerts")

_ADDRESS = re.compile(r"^[^@\s<>\"',;()\[\]\\]{1,64}@[A-Za-z0-9.-]{1,253}$")


class DeliveryError(PgAgentWatchError, RuntimeError):
    """A message that did not leave; ``permanent`` means do not try again."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


@dataclass
class Message:
    """One outgoing message, channel-neutral."""

    subject: str
    text: str
    html: str
    message_id: str = ""
    headers: dict[str, str] = field(default_factory=dict)


class Channel(Protocol):
    name: str

    async def send(self, recipient: str, message: Message) -> str: ...


def check_address(address: str) -> str:
    """Return the address if it is one; raise a permanent DeliveryError otherwise."""
    if not isinstance(address, str) or not _ADDRESS.match(address):
        raise DeliveryError(
            f"not an e-mail address: {str(address)[:80]!r}", permanent=True
        )
    return address


def _answer(code: int, message: str) -> str:
    return f"{code} {message}".strip()


class SmtpChannel:
    """E-mail through one SMTP server, one fresh connection per message."""

    name = "email"

    def __init__(self, settings: SmtpSettings) -> None:
        self.settings = settings
        # The demo's mail catcher points these at itself.
        self.host = settings.host
        self.port = settings.effective_port()
        self.security = settings.effective_security()
        self.sends = 0

    @property
    def configured(self) -> bool:
        return bool(self.host)

    def describe(self) -> str:
        """Where mail goes, without any secret."""
        return f"smtp {self.host}:{self.port} ({self.security})"

    def build(self, recipient: str, message: Message) -> EmailMessage:
        """The MIME message: text with an HTML alternative, every header set."""
        mail = EmailMessage()
        mail["From"] = self.settings.sender
        if self.settings.reply_to:
            mail["Reply-To"] = self.settings.reply_to
        mail["To"] = Address(addr_spec=recipient)
        mail["Subject"] = message.subject
        mail["Date"] = formatdate(localtime=False, usegmt=True)
        mail["Message-ID"] = message.message_id
        for key, value in message.headers.items():
            mail[key] = value
        mail.set_content(message.text, cte="quoted-printable")
        mail.add_alternative(message.html, subtype="html", cte="quoted-printable")
        return mail

    async def send(self, recipient: str, message: Message) -> str:
        """Send one message; return the server's answer to the data.

        Raises DeliveryError: permanent for a bad address, a refused login,
        sender or recipient, or any 5xx answer; transient otherwise.
        """
        check_address(recipient)
        if not self.host:
            raise DeliveryError("no SMTP server configured (SMTP_HOST)")
        mail = self.build(recipient, message)
        sender = parseaddr(self.settings.sender)[1] or "pgagent-watch@localhost"
        s = self.settings
        try:
            _, answer = await aiosmtplib.send(
                mail,
                sender=sender,
                recipients=[recipient],
                hostname=self.host,
                port=self.port,
                username=s.user,
                password=s.password.get_secret_value() if s.password else None,
                # Exactly one TLS path: never an opportunistic STARTTLS on top.
                use_tls=self.security == "tls",
                start_tls=self.security == "starttls",
                validate_certs=s.validate_certs,
                cert_bundle=str(s.ca_file) if s.ca_file else None,
                timeout=s.timeout,
            )
        except aiosmtplib.SMTPAuthenticationError as exc:
            raise DeliveryError(
                f"login refused: {_answer(exc.code, exc.message)}", permanent=True
            ) from exc
        except aiosmtplib.SMTPRecipientsRefused as exc:
            codes = [r.code for r in exc.recipients]
            text = "; ".join(
                f"{r.recipient}: {_answer(r.code, r.message)}" for r in exc.recipients
            )
            raise DeliveryError(
                f"recipient refused: {text}",
                permanent=all(code >= 500 for code in codes),
            ) from exc
        except aiosmtplib.SMTPResponseException as exc:
            raise DeliveryError(
                f"server answered {_answer(exc.code, exc.message)}",
                permanent=exc.code >= 500,
            ) from exc
        except (aiosmtplib.SMTPTimeoutError, TimeoutError) as exc:
            raise DeliveryError(
                f"the SMTP server did not answer within {s.timeout:g} s"
            ) from exc
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise DeliveryError(
                f"cannot reach {self.describe()}: {exc}".strip()
            ) from exc
        self.sends += 1
        return answer


def build_url(config: ChannelConfig) -> str:
    """The Apprise URL with the credentials percent-encoded into it."""
    url = config.url.get_secret_value()
    if config.user is None and config.password is None:
        return url
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    userinfo = quote(config.user or "", safe="")
    if config.password is not None:
        userinfo += ":" + quote(config.password.get_secret_value(), safe="")
    return urlunsplit(parts._replace(netloc=f"{userinfo}@{host}"))


_SECRET_QUERY = re.compile(
    r"(?i)([?&](?:token|key|apikey|pass|password|secret|auth|webhook)[^=&]*=)[^&#]*"
)


def redact_url(url: str) -> str:
    """A URL safe to show: user info and secret-looking query values hidden."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            netloc = "***@" + netloc.rpartition("@")[2]
        path = parts.path
        # Tokens often live in the path (Slack, Discord, Telegram...).
        if parts.scheme not in ("json", "jsons", "form", "forms", "xml", "xmls"):
            path = re.sub(r"/[^/]{12,}", "/***", path)
        shown = urlunsplit(parts._replace(netloc=netloc, path=path, fragment=""))
        return _SECRET_QUERY.sub(r"\1***", shown)
    except ValueError:
        return "<a URL>"


def redact(text: str, secrets: list[str]) -> str:
    """Hide every occurrence of each secret (and its percent-encoded form)."""
    for secret in secrets:
        if secret:
            for form in {secret, quote(secret, safe="")}:
                text = text.replace(form, "***")
    return text


class AppriseChannel:
    """A named notification channel of Apprise's (web hook, Slack, ntfy, ...)."""

    def __init__(self, name: str, config: ChannelConfig) -> None:
        self.name = name
        self.config = config
        self.url = build_url(config)
        self.shown = redact_url(self.url)
        self._secrets = [self.url, config.url.get_secret_value()]
        if config.password is not None:
            self._secrets.append(config.password.get_secret_value())
        parts = urlsplit(self.url)
        if parts.password:
            self._secrets.append(parts.password)
        self.sends = 0

    def describe(self) -> str:
        return f"{self.name} ({self.shown})"

    async def send(self, recipient: str, message: Message) -> str:
        """Notify through Apprise; the recipient is the channel itself.

        Raises DeliveryError: permanent for a URL Apprise cannot use,
        transient when the service failed or did not answer in time.
        """
        notifier = apprise.Apprise()
        if not notifier.add(self.url):
            raise DeliveryError(
                f"channel {self.name}: not a usable Apprise URL ({self.shown})",
                permanent=True,
            )
        try:
            result: Any = await notifier.async_notify(
                body=message.text,
                title=message.subject,
                body_format=apprise.NotifyFormat.TEXT,
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise DeliveryError(
                redact(f"channel {self.name}: {exc}", self._secrets)
            ) from None
        if not result:
            logs = [
                e.message
                for e in (result.logs() if hasattr(result, "logs") else [])
                if e.level in ("WARNING", "ERROR", "CRITICAL")
            ]
            why = "; ".join(logs[-3:]) or "the service did not accept it"
            raise DeliveryError(
                redact(f"channel {self.name}: {why}"[:500], self._secrets)
            )
        self.sends += 1
        return f"{self.name}: accepted"
