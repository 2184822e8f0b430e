"""C18: exactly one TLS path per setting, encoded display names, timeouts."""

from __future__ import annotations

import asyncio
import email
import ssl
import subprocess
from collections.abc import AsyncIterator
from email import policy
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session

from pgagent_watch.alerts.channels import DeliveryError, Message, SmtpChannel
from pgagent_watch.config import SmtpSettings


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("tls")
    key, crt = folder / "key.pem", folder / "cert.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(crt),
        ],
        check=True,
        capture_output=True,
    )
    return key, crt


class Catcher:
    def __init__(self) -> None:
        self.mails: list[tuple[Any, bool]] = []

    async def handle_DATA(  # aiosmtpd calls it by this name
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        mail = email.message_from_bytes(
            envelope.original_content or b"", policy=policy.default
        )
        tls = server.transport.get_extra_info("ssl_object") is not None
        self.mails.append((mail, tls))
        return "250 OK"


async def serve(
    cert: tuple[Path, Path], *, starttls: bool, implicit: bool
) -> tuple[asyncio.Server, Catcher, int]:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(cert[1]), str(cert[0]))
    catcher = Catcher()
    server = await asyncio.get_running_loop().create_server(
        lambda: SMTP(catcher, tls_context=ctx if starttls else None),
        "127.0.0.1",
        0,
        ssl=ctx if implicit else None,
    )
    return server, catcher, int(server.sockets[0].getsockname()[1])


@pytest.fixture
async def servers(cert: tuple[Path, Path]) -> AsyncIterator[dict[str, Any]]:
    made = {
        "starttls": await serve(cert, starttls=True, implicit=False),
        "none": await serve(cert, starttls=False, implicit=False),
        "implicit": await serve(cert, starttls=False, implicit=True),
    }
    yield made
    for server, _, _ in made.values():
        server.close()
        await server.wait_closed()


def channel(
    port: int, security: str, cert: tuple[Path, Path], **kw: Any
) -> SmtpChannel:
    return SmtpChannel(
        SmtpSettings(
            host="127.0.0.1",
            port=port,
            security=security,  # type: ignore[arg-type]
            ca_file=cert[1],
            timeout=5,
            **kw,
        )
    )


MESSAGE = Message("subject", "text", "<p>html</p>", "<t1@example.test>")


async def test_starttls_plain_and_implicit_tls_each_take_exactly_their_path(
    servers, cert
):
    _, catcher, port = servers["starttls"]
    await channel(port, "starttls", cert).send("a@example.test", MESSAGE)
    # Plain means plain: an offered STARTTLS is not taken.
    await channel(port, "plain", cert).send("a@example.test", MESSAGE)
    assert [tls for _, tls in catcher.mails] == [True, False]

    _, catcher, port = servers["implicit"]
    await channel(port, "tls", cert).send("a@example.test", MESSAGE)
    assert [tls for _, tls in catcher.mails] == [True]

    _, catcher, port = servers["none"]
    with pytest.raises(DeliveryError, match="STARTTLS"):
        await channel(port, "starttls", cert).send("a@example.test", MESSAGE)
    assert catcher.mails == []


def test_the_port_picks_the_tls_path_when_security_is_not_given() -> None:
    assert SmtpSettings(port=465).effective_security() == "tls"
    assert SmtpSettings(port=587).effective_security() == "starttls"
    assert SmtpSettings(port=25).effective_security() == "plain"
    assert SmtpSettings(security="tls").effective_port() == 465


async def test_a_non_ascii_sender_name_is_encoded(servers, cert):
    _, catcher, port = servers["none"]
    sender = "Überwachung · Ops 監視 <ops@example.test>"
    await channel(
        port, "plain", cert, sender=sender, reply_to="team@example.test"
    ).send("a@example.test", MESSAGE)
    mail, _ = catcher.mails[0]
    assert mail["From"].addresses[0].display_name == "Überwachung · Ops 監視"
    assert mail["Reply-To"] == "team@example.test"
    assert mail["Message-ID"] == "<t1@example.test>"
    raw = mail.as_bytes()
    assert b"=?utf-8?" in raw


async def test_a_server_that_never_answers_times_out():
    async def silent(reader: Any, writer: Any) -> None:
        await asyncio.sleep(2)
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = int(server.sockets[0].getsockname()[1])
    try:
        smtp = SmtpChannel(SmtpSettings(host="127.0.0.1", port=port, timeout=0.3))
        with pytest.raises(DeliveryError, match="did not answer") as caught:
            await smtp.send("a@example.test", MESSAGE)
        assert not caught.value.permanent
    finally:
        server.close()
        await server.wait_closed()
