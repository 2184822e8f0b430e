"""Who is asking: API tokens, session cookies, a trusted proxy, or nobody.

A session is a row in ``pgagent_watch.auth_session`` (only a SHA-256 of its
random id) and a cookie holding that id signed with itsdangerous. The cookie
is HttpOnly and SameSite=Lax; the row ends on sign-out, on the idle timeout,
at the maximum age, and when the user is disabled or deleted. Every
authentication of a page (cookie, proxy header, the anonymous administrator
of a fresh install) carries a CSRF token that state-changing requests send
back in ``X-CSRF-Token``; API tokens need none, since a browser never sends
them on its own.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import logging
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from http.cookies import CookieError, SimpleCookie
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from itsdangerous import BadData, URLSafeTimedSerializer

from .. import users
from ..access import ANONYMOUS, Principal
from ..config import AuthSettings
from ..push import NAMESPACE

if TYPE_CHECKING:
    from ..service import Service

logger = logging.getLogger("pgagent_watch.auth")

CSRF_HEADER = "x-csrf-token"
# Where a socket's credentials wait in its environ, to be checked again.
SOCKET_CREDENTIALS = "pgagent_watch.credentials"
SOCKET_SESSION = "pgagent_watch.session_hash"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
Method = Literal["token", "session", "proxy", "anonymous"]


@dataclass(frozen=True, slots=True)
class Authenticated:
    """How a request or socket was authenticated."""

    principal: Principal
    method: Method
    # What state-changing requests must send in X-CSRF-Token; None for tokens.
    csrf_token: str | None = None
    session_hash: bytes | None = None


class SignInRefused(Exception):
    """Wrong name or password, or too many failures: wait ``retry_after`` s."""

    def __init__(self, message: str, retry_after: float = 0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Throttle:
    """Failed sign-ins per (user name, address): a few free, then a doubling wait.

    In memory, per instance: a guesser spread over several instances gets a
    few more tries, never many more.
    """

    MAX_ENTRIES = 10_000

    def __init__(self, free: int, initial: float, maximum: float) -> None:
        self.free = free
        self.initial = initial
        self.maximum = maximum
        self._fails: dict[tuple[str, str], tuple[int, float]] = {}

    @staticmethod
    def _key(name: str, address: str | None) -> tuple[str, str]:
        return (name.lower()[:64], address or "")

    def _delay(self, count: int) -> float:
        if count < self.free:
            return 0.0
        return float(min(self.initial * 2 ** min(count - self.free, 30), self.maximum))

    def wait(self, name: str, address: str | None) -> float:
        """Seconds to wait before the next attempt may be checked; 0 for now."""
        count, last = self._fails.get(self._key(name, address), (0, 0.0))
        return max(0.0, last + self._delay(count) - time.monotonic())

    def failed(self, name: str, address: str | None) -> None:
        now = time.monotonic()
        if len(self._fails) >= self.MAX_ENTRIES:
            horizon = now - 2 * self.maximum
            self._fails = {k: v for k, v in self._fails.items() if v[1] > horizon}
        key = self._key(name, address)
        count, _ = self._fails.get(key, (0, 0.0))
        self._fails[key] = (count + 1, now)

    def succeeded(self, name: str, address: str | None) -> None:
        self._fails.pop(self._key(name, address), None)


def _hash(session_id: str) -> bytes:
    return hashlib.sha256(session_id.encode()).digest()


def _in_networks(address: str | None, networks: list[str]) -> bool:
    if not address:
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    for net in networks:
        try:
            if ip in ipaddress.ip_network(net, strict=False):
                return True
        except ValueError:
            continue
    return False


class Authenticator:
    """The sign-in rules of one Service: one instance, made by the Service."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.settings: AuthSettings = service.settings.auth
        self.throttle = Throttle(
            self.settings.free_attempts,
            self.settings.backoff_initial,
            self.settings.backoff_max,
        )
        self._secret: bytes | None = None

    @property
    def cookie_name(self) -> str:
        return self.settings.cookie_name

    @property
    def cookie_secure(self) -> bool:
        if self.settings.cookie_secure is not None:
            return self.settings.cookie_secure
        url = self.service.settings.web.public_url or ""
        return url.startswith("https:")

    async def secret(self) -> bytes:
        """The signing key: configured, else kept in the state database."""
        if self._secret is not None:
            return self._secret
        if self.settings.secret_key is not None:
            self._secret = self.settings.secret_key.get_secret_value().encode()
            return self._secret
        async with self.service.state_pool.connection(timeout=5) as conn:
            await conn.execute(
                "INSERT INTO pgagent_watch.setting (key, value)"
                " VALUES ('auth.secret_key', to_jsonb(%s::text))"
                " ON CONFLICT (key) DO NOTHING",
                (secrets.token_urlsafe(48),),
            )
            cur = await conn.execute(
                "SELECT value #>> '{}' FROM pgagent_watch.setting"
                " WHERE key = 'auth.secret_key'"
            )
            row = await cur.fetchone()
        assert row is not None
        self._secret = str(row[0]).encode()
        return self._secret

    async def _serializer(self) -> URLSafeTimedSerializer:
        return URLSafeTimedSerializer(await self.secret(), salt="pgw-session")

    async def _derived_csrf(self, what: str) -> str:
        """A CSRF token for pages without a session row (anonymous, proxy)."""
        digest = hmac.new(await self.secret(), f"csrf:{what}".encode(), "sha256")
        return digest.hexdigest()

    # -- addresses and origins ------------------------------------------------

    def client_address(
        self, peer: str | None, headers: Mapping[str, str]
    ) -> str | None:
        """The client's address: the peer's, or X-Forwarded-For from a trusted proxy."""
        if _in_networks(peer, self.settings.trusted_proxies):
            forwarded = headers.get("x-forwarded-for", "")
            last = forwarded.split(",")[-1].strip()
            if last:
                return last[:64]
        return peer

    def same_origin(self, origin: str | None, host: str | None) -> bool:
        """Whether a browser's Origin is this service (always true without one)."""
        if not origin:
            return True
        netloc = urlsplit(origin).netloc.lower()
        allowed = {(host or "").lower()}
        if self.service.settings.web.public_url:
            allowed.add(urlsplit(self.service.settings.web.public_url).netloc.lower())
        return netloc in allowed

    # -- authentication -------------------------------------------------------

    async def authenticate(
        self,
        *,
        bearer: str | None,
        cookie: str | None,
        proxy_user: str | None,
        peer: str | None,
    ) -> Authenticated | None:
        """Who this is, or None; until users exist, the anonymous administrator.

        A bearer token that is wrong is refused even while no user exists.
        """
        service = self.service
        if bearer:
            who = await service.principal_for_token(bearer)
            return Authenticated(who, "token") if who else None
        if (
            self.settings.trusted_header
            and proxy_user
            and _in_networks(peer, self.settings.trusted_proxies)
        ):
            found = await self._proxy_user(proxy_user.strip())
            if found is not None:
                return found
        if cookie:
            found = await self._session(cookie)
            if found is not None:
                return found
        if not await service.users_exist():
            return Authenticated(ANONYMOUS, "anonymous", await self._derived_csrf("*"))
        return None

    async def _proxy_user(self, name: str) -> Authenticated | None:
        if not users.valid_name(name):
            return None
        async with self.service.state_pool.connection(timeout=5) as conn:
            user_id = await users.user_id_by_name(conn, name)
            if user_id is None:
                return None
            who = await users.principal_for_user(
                conn, user_id, self.service.server_ids_by_name()
            )
        if who is None:
            return None
        return Authenticated(who, "proxy", await self._derived_csrf(f"proxy:{name}"))

    async def _session(self, cookie: str) -> Authenticated | None:
        try:
            session_id = (await self._serializer()).loads(
                cookie, max_age=int(self.settings.max_age) + 1
            )
        except BadData:
            return None
        if not isinstance(session_id, str):
            return None
        id_hash = _hash(session_id)
        async with self.service.state_pool.connection(timeout=5) as conn:
            cur = await conn.execute(
                "UPDATE pgagent_watch.auth_session SET last_seen_at = now()"
                " WHERE id_hash = %s"
                " AND last_seen_at > now() - make_interval(secs => %s)"
                " AND created_at > now() - make_interval(secs => %s)"
                " RETURNING user_id, csrf_token",
                (id_hash, self.settings.idle_timeout, self.settings.max_age),
            )
            row = await cur.fetchone()
            if row is None:
                return None
            who = await users.principal_for_user(
                conn, int(row[0]), self.service.server_ids_by_name()
            )
        if who is None:
            return None
        return Authenticated(who, "session", str(row[1]), id_hash)

    # -- signing in and out ---------------------------------------------------

    async def sign_in(
        self, name: str, password: str, address: str | None
    ) -> tuple[str, Principal]:
        """Check a name and password; return the new session's cookie value.

        Raises SignInRefused (with the seconds to wait when throttled).
        """
        wait = self.throttle.wait(name, address)
        if wait > 0:
            raise SignInRefused("too many failed sign-ins: wait and try again", wait)
        if not users.valid_name(name):
            # Not a name any user can have (and maybe not storable at all).
            self.throttle.failed(name, address)
            raise SignInRefused("wrong name or password")
        async with self.service.state_pool.connection(timeout=5) as conn:
            user_id = await users.check_credentials(conn, name, password[:1024])
            if user_id is None:
                self.throttle.failed(name, address)
                raise SignInRefused("wrong name or password")
            who = await users.principal_for_user(
                conn, user_id, self.service.server_ids_by_name()
            )
            if who is None:
                raise SignInRefused("wrong name or password")
            session_id = secrets.token_urlsafe(32)
            await conn.execute(
                "DELETE FROM pgagent_watch.auth_session"
                " WHERE last_seen_at < now() - make_interval(secs => %s)"
                " OR created_at < now() - make_interval(secs => %s)",
                (self.settings.idle_timeout, self.settings.max_age),
            )
            await conn.execute(
                "INSERT INTO pgagent_watch.auth_session"
                " (id_hash, user_id, csrf_token, address) VALUES (%s, %s, %s, %s)",
                (_hash(session_id), user_id, secrets.token_urlsafe(32), address),
            )
        self.throttle.succeeded(name, address)
        self.service.forget_users_exist()
        return (await self._serializer()).dumps(session_id), who

    async def sign_out(self, session_hash: bytes) -> None:
        async with self.service.state_pool.connection(timeout=5) as conn:
            await conn.execute(
                "DELETE FROM pgagent_watch.auth_session WHERE id_hash = %s",
                (session_hash,),
            )

    # -- open sockets -----------------------------------------------------------

    def remember_socket(
        self, environ: dict[str, Any], credentials: dict[str, Any], found: Authenticated
    ) -> None:
        """Keep what a socket signed in with, to check it again while it is open."""
        environ[SOCKET_CREDENTIALS] = credentials
        environ[SOCKET_SESSION] = found.session_hash

    async def check_sockets(self, session_hash: bytes | None = None) -> int:
        """Authenticate every open socket again (or those of one session).

        A socket whose session ended, whose token was revoked or whose user
        was disabled gets ``session_ended`` and is disconnected; one whose
        grants changed gets the new principal and leaves the rooms of the
        servers it may no longer see. Returns how many were disconnected.
        """
        sio = self.service.sio
        ended = 0
        for sid, _ in list(sio.manager.get_participants(NAMESPACE, None)):
            environ = sio.get_environ(sid, NAMESPACE) or {}
            credentials = environ.get(SOCKET_CREDENTIALS)
            if credentials is None:
                continue
            if session_hash is not None and environ.get(SOCKET_SESSION) != session_hash:
                continue
            try:
                found = await self.authenticate(**credentials)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # The state database is away: nobody is thrown out for that.
                logger.warning("sockets not checked: %s", exc)
                return ended
            if found is None:
                ended += 1
                await sio.emit(
                    "session_ended",
                    {"reason": "signed out, expired or disabled"},
                    to=sid,
                    namespace=NAMESPACE,
                )
                await sio.disconnect(sid, namespace=NAMESPACE)
                continue
            session = await sio.get_session(sid, namespace=NAMESPACE)
            if session.get("principal") == found.principal:
                continue
            session["principal"] = found.principal
            await sio.save_session(sid, session, namespace=NAMESPACE)
            for name in sio.rooms(sid, namespace=NAMESPACE):
                server = name.removeprefix("server:")
                if server.isdigit() and not found.principal.can_see(int(server)):
                    await sio.leave_room(sid, name, namespace=NAMESPACE)
        return ended

    async def watch_sockets(self) -> None:
        """Check every open socket every ``auth.socket_check_interval`` seconds."""
        while True:
            await asyncio.sleep(self.settings.socket_check_interval)
            try:
                ended = await self.check_sockets()
                if ended:
                    logger.info("%d sockets disconnected: their sign-in ended", ended)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("checking the open sockets failed")


def csrf_ok(found: Authenticated, sent: str | None) -> bool:
    """Whether a state-changing request carries the right CSRF token."""
    if found.method == "token":
        return True
    if not sent or found.csrf_token is None:
        return False
    return hmac.compare_digest(sent.encode(), found.csrf_token.encode())


def cookie_from_header(header: str | None, name: str) -> str | None:
    """One cookie's value from a Cookie header (for the socket's environ)."""
    if not header:
        return None
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(header)
    except CookieError:
        return None
    morsel = jar.get(name)
    return morsel.value if morsel is not None else None


def peer_of_environ(environ: Mapping[str, Any]) -> str | None:
    """The socket's peer address (the ASGI scope's client)."""
    scope = environ.get("asgi.scope") or {}
    client = scope.get("client") if isinstance(scope, dict) else None
    return str(client[0]) if client else None
