"""The audit trail: who changed what, when and from where.

Every module that changes something calls ``record`` once the change is
made (or refused, with ``ok=False``)::

    await audit.record(service, who, "job.run_now", request=request,
                       server_id=server_id, target=f"job {job_id}")

Recording never raises: a state database that cannot be written is logged
and the action it describes stands. Detail values under a key that names a
secret (password, token, secret, dsn, ...) are replaced by "***".
"""

from __future__ import annotations

import asyncio
import logging
import re
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypedDict

from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from .access import Principal

if TYPE_CHECKING:
    from .service import Service

logger = logging.getLogger("pgagent_watch.audit")

_SECRET_KEY = re.compile(r"pass|secret|token|dsn|key|auth|cookie", re.IGNORECASE)
_ACTION = re.compile(r"^[a-z][a-z0-9_.]{0,63}$")


class AuditEntry(TypedDict):
    id: int
    at: datetime
    user_id: int | None
    user_name: str
    action: str
    ok: bool
    server_id: int | None
    target: str | None
    address: str | None
    detail: dict[str, Any]


def redact(detail: Any) -> Any:
    """The detail with every value under a secret-looking key replaced."""
    if isinstance(detail, dict):
        return {
            str(k): "***" if _SECRET_KEY.search(str(k)) else redact(v)
            for k, v in detail.items()
        }
    if isinstance(detail, list | tuple):
        return [redact(v) for v in detail]
    if isinstance(detail, str | int | float | bool) or detail is None:
        return detail
    return str(detail)


def client_address(request: Any) -> str | None:
    """The client address of a request (as the auth module resolved it)."""
    resolved = getattr(getattr(request, "state", None), "client_address", None)
    if isinstance(resolved, str):
        return resolved
    client = getattr(request, "client", None)
    return client.host if client is not None else None


def socket_address(service: Service, sid: str) -> str | None:
    """The client address of an open socket (for ``record(address=...)``)."""
    from .push import NAMESPACE

    environ = service.sio.get_environ(sid, NAMESPACE) or {}
    scope = environ.get("asgi.scope") or {}
    client = scope.get("client") if isinstance(scope, dict) else None
    if not client:
        return None
    headers = {
        k[5:].lower().replace("_", "-"): v
        for k, v in environ.items()
        if isinstance(k, str) and k.startswith("HTTP_") and isinstance(v, str)
    }
    return service.auth.client_address(str(client[0]), headers)


async def record(
    service: Service,
    who: Principal | str,
    action: str,
    *,
    request: Any = None,
    address: str | None = None,
    server_id: int | None = None,
    target: str | None = None,
    detail: dict[str, Any] | None = None,
    ok: bool = True,
) -> None:
    """Add one entry: ``action`` is a dotted lower-case name ("user.create").

    ``who`` is the Principal acting, or a name (a sign-in attempt by a name
    that is no user). The address comes from ``request`` unless given (from a socket
    handler: ``address=audit.socket_address(service, sid)``).
    Never raises, except CancelledError.
    """
    if not _ACTION.match(action):
        raise ValueError(f"not an audit action name: {action!r}")
    if isinstance(who, Principal):
        user_id, user_name = who.user_id, who.name
    else:
        user_id, user_name = None, who[:100]
    if address is None and request is not None:
        address = client_address(request)
    try:
        async with service.state_pool.connection(timeout=5) as conn:
            await conn.execute(
                "INSERT INTO pgagent_watch.audit (user_id, user_name, action, ok,"
                " server_id, target, address, detail)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                (
                    user_id,
                    user_name,
                    action,
                    ok,
                    server_id,
                    target[:500] if target else None,
                    address,
                    Jsonb(redact(detail or {})),
                ),
            )
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        logger.warning("audit entry %s by %s not written: %s", action, user_name, exc)


async def entries(
    service: Service,
    *,
    limit: int = 100,
    before_id: int | None = None,
    action: str | None = None,
    user_name: str | None = None,
) -> list[AuditEntry]:
    """The newest entries first, optionally before an id, of an action or user."""
    async with (
        service.state_pool.connection(timeout=5) as conn,
        conn.cursor(row_factory=dict_row) as cur,
    ):
        await cur.execute(
            "SELECT id, at, user_id, user_name, action, ok, server_id, target,"
            " address, detail FROM pgagent_watch.audit"
            " WHERE (%(before)s::bigint IS NULL OR id < %(before)s)"
            " AND (%(action)s::text IS NULL OR action = %(action)s)"
            " AND (%(user)s::text IS NULL OR user_name = %(user)s)"
            " ORDER BY id DESC LIMIT %(limit)s",
            {"before": before_id, "action": action, "user": user_name, "limit": limit},
        )
        return await cur.fetchall()  # type: ignore[return-value]
