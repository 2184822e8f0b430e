"""Users, grants and API tokens in the state database.

Passwords are hashed with argon2; API tokens are random and long, so a
SHA-256 of them is enough at rest (and lets a token be found by its hash).
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Mapping
from typing import Any

import psycopg
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from .access import Principal, Role
from .errors import PgAgentWatchError

AnyConn = psycopg.AsyncConnection[Any]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
_EMAIL = re.compile(r"^[^@\s<>\"',;]{1,64}@[^@\s<>\"',;]{1,255}$")
TOKEN_PREFIX = "pgw_"
_hasher = PasswordHasher()


class UserError(PgAgentWatchError, ValueError):
    """A user name, address, role or password that cannot be accepted."""


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise UserError("a user name is 1 to 64 letters, digits, '.', '_', '@' or '-'")
    return name


def check_email(email: str | None) -> str | None:
    if email is not None and not _EMAIL.match(email):
        raise UserError(f"not an e-mail address: {email[:80]!r}")
    return email


def hash_password(password: str) -> str:
    if len(password) < 8:
        raise UserError("a password has at least 8 characters")
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    """Whether the password matches; False (never an error) for a bad hash."""
    if not password_hash:
        return False
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


async def any_users(conn: AnyConn) -> bool:
    cur = await conn.execute("SELECT EXISTS (SELECT 1 FROM pgagent_watch.app_user)")
    row = await cur.fetchone()
    return bool(row and row[0])


async def create_user(
    conn: AnyConn,
    name: str,
    role: Role | str,
    *,
    email: str | None = None,
    password: str | None = None,
    servers: list[str] | None = None,
) -> int:
    """Create a user; return its id. ``servers`` None grants every server.

    Raises UserError for a bad name, address, role or password, or a name
    already taken.
    """
    check_name(name)
    check_email(email)
    try:
        role = Role(role)
    except ValueError:
        raise UserError(f"unknown role {role!r}: viewer, operator or admin") from None
    hashed = hash_password(password) if password is not None else None
    try:
        async with conn.transaction():
            cur = await conn.execute(
                "INSERT INTO pgagent_watch.app_user (name, email, role, password_hash)"
                " VALUES (%s, %s, %s, %s) RETURNING id",
                (name, email, role.value, hashed),
            )
            row = await cur.fetchone()
            assert row is not None
            user_id = int(row[0])
            for server in servers if servers is not None else ["*"]:
                await conn.execute(
                    "INSERT INTO pgagent_watch.user_grant (user_id, server_name)"
                    " VALUES (%s, %s) ON CONFLICT DO NOTHING",
                    (user_id, server),
                )
    except psycopg.errors.UniqueViolation:
        raise UserError(f"a user named {name!r} exists already") from None
    return user_id


async def create_token(conn: AnyConn, user_id: int, name: str = "") -> str:
    """Create an API token for a user; return it (the only time it is shown)."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    await conn.execute(
        "INSERT INTO pgagent_watch.api_token (user_id, name, token_hash)"
        " VALUES (%s, %s, %s)",
        (user_id, name[:100], token_hash(token)),
    )
    return token


_PRINCIPAL = """
SELECT u.id, u.name, u.role, u.email,
       coalesce(array_agg(g.server_name) FILTER (WHERE g.server_name IS NOT NULL), '{}')
FROM pgagent_watch.app_user u
LEFT JOIN pgagent_watch.user_grant g ON g.user_id = u.id
WHERE NOT u.disabled AND u.id = %s
GROUP BY u.id
"""


def _principal(row: Any, server_ids: Mapping[str, int]) -> Principal:
    grants: list[str] = list(row[4])
    servers = (
        None
        if "*" in grants
        else frozenset(server_ids[name] for name in grants if name in server_ids)
    )
    return Principal(
        user_id=int(row[0]),
        name=row[1],
        role=Role(row[2]),
        servers=servers,
        email=row[3],
    )


async def principal_for_user(
    conn: AnyConn, user_id: int, server_ids: Mapping[str, int]
) -> Principal | None:
    """The Principal of an enabled user, or None."""
    cur = await conn.execute(_PRINCIPAL, (user_id,))
    row = await cur.fetchone()
    return _principal(row, server_ids) if row else None


async def principal_for_token(
    conn: AnyConn, token: str, server_ids: Mapping[str, int]
) -> Principal | None:
    """The Principal owning a valid, unrevoked API token, or None."""
    if not token.startswith(TOKEN_PREFIX) or len(token) > 200:
        return None
    cur = await conn.execute(
        "UPDATE pgagent_watch.api_token SET last_used_at = now()"
        " WHERE token_hash = %s AND revoked_at IS NULL RETURNING user_id",
        (token_hash(token),),
    )
    row = await cur.fetchone()
    if row is None:
        return None
    return await principal_for_user(conn, int(row[0]), server_ids)
