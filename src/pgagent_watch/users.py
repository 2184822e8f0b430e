"""Users, grants and API tokens in the state database.

Passwords are hashed with argon2; API tokens are random and long, so a
SHA-256 of them is enough at rest (and lets a token be found by its hash).
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Mapping
from datetime import datetime
from typing import Any, TypedDict

import psycopg
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from psycopg.rows import dict_row

from .access import Principal, Role
from .errors import PgAgentWatchError

AnyConn = psycopg.AsyncConnection[Any]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
_EMAIL = re.compile(
    r"^[^@\s<>\"',;\x00-\x1f\x7f]{1,64}@[^@\s<>\"',;\x00-\x1f\x7f]{1,255}$"
)
TOKEN_PREFIX = "pgw_"
_hasher = PasswordHasher()


class UserError(PgAgentWatchError, ValueError):
    """A user name, address, role or password that cannot be accepted."""


def valid_name(name: str) -> bool:
    return bool(_NAME.fullmatch(name))


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise UserError("a user name is 1 to 64 letters, digits, '.', '_', '@' or '-'")
    return name


def check_email(email: str | None) -> str | None:
    if email is not None and not _EMAIL.fullmatch(email):
        raise UserError(f"not an e-mail address: {email[:80]!r}")
    return email


def check_role(role: Role | str) -> Role:
    try:
        return Role(role)
    except ValueError:
        raise UserError(f"unknown role {role!r}: viewer, operator or admin") from None


async def _lock_user(conn: AnyConn, user_id: int) -> tuple[str, bool] | None:
    """The (role, disabled) of a user, its row locked until the transaction ends."""
    cur = await conn.execute(
        "SELECT role, disabled FROM pgagent_watch.app_user WHERE id = %s FOR UPDATE",
        (user_id,),
    )
    row = await cur.fetchone()
    return (row[0], row[1]) if row else None


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
    role = check_role(role)
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


class UserOut(TypedDict):
    """A user as the API shows it: never a password hash."""

    id: int
    name: str
    email: str | None
    role: str
    disabled: bool
    servers: list[str]
    created_at: datetime


class TokenOut(TypedDict):
    """An API token as listed: never the token itself."""

    id: int
    user_id: int
    name: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


_USERS = """
SELECT u.id, u.name, u.email, u.role, u.disabled, u.created_at,
       coalesce(array_agg(g.server_name ORDER BY g.server_name)
                FILTER (WHERE g.server_name IS NOT NULL), '{}') AS servers
FROM pgagent_watch.app_user u
LEFT JOIN pgagent_watch.user_grant g ON g.user_id = u.id
WHERE (%(id)s::integer IS NULL OR u.id = %(id)s)
  AND (%(name)s::text IS NULL OR u.name = %(name)s)
GROUP BY u.id ORDER BY u.name
"""

# Verifying against a real hash when the user does not exist keeps the
# answer's timing from telling which names exist.
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


def generate_password() -> str:
    """A random password of 20 URL-safe characters."""
    return secrets.token_urlsafe(15)


async def list_users(
    conn: AnyConn, *, user_id: int | None = None, name: str | None = None
) -> list[UserOut]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(_USERS, {"id": user_id, "name": name})
        return await cur.fetchall()  # type: ignore[return-value]


async def get_user(conn: AnyConn, user_id: int) -> UserOut | None:
    found = await list_users(conn, user_id=user_id)
    return found[0] if found else None


async def check_credentials(conn: AnyConn, name: str, password: str) -> int | None:
    """The id of the enabled user with this name and password, else None."""
    cur = await conn.execute(
        "SELECT id, password_hash FROM pgagent_watch.app_user"
        " WHERE name = %s AND NOT disabled",
        (name,),
    )
    row = await cur.fetchone()
    if row is None:
        verify_password(_DUMMY_HASH, password)
        return None
    return int(row[0]) if verify_password(row[1], password) else None


async def user_id_by_name(conn: AnyConn, name: str) -> int | None:
    """The id of the enabled user with this name (trusted proxy sign-in)."""
    cur = await conn.execute(
        "SELECT id FROM pgagent_watch.app_user WHERE name = %s AND NOT disabled",
        (name,),
    )
    row = await cur.fetchone()
    return int(row[0]) if row else None


async def _other_admins(conn: AnyConn, user_id: int) -> int:
    cur = await conn.execute(
        "SELECT count(*) FROM pgagent_watch.app_user"
        " WHERE role = 'admin' AND NOT disabled AND id <> %s",
        (user_id,),
    )
    row = await cur.fetchone()
    return int(row[0]) if row else 0


async def set_grants(conn: AnyConn, user_id: int, servers: list[str]) -> None:
    """Replace a user's grants: server names, or '*' for every server."""
    for server in servers:
        if server != "*" and not _NAME.fullmatch(server):
            raise UserError(f"not a server name: {server[:80]!r}")
    async with conn.transaction():
        await conn.execute(
            "DELETE FROM pgagent_watch.user_grant WHERE user_id = %s", (user_id,)
        )
        for server in dict.fromkeys(servers):
            await conn.execute(
                "INSERT INTO pgagent_watch.user_grant (user_id, server_name)"
                " VALUES (%s, %s)",
                (user_id, server),
            )


async def update_user(
    conn: AnyConn,
    user_id: int,
    *,
    email: str | None = None,
    role: str | None = None,
    disabled: bool | None = None,
    password: str | None = None,
    servers: list[str] | None = None,
) -> bool:
    """Change what is given; False when no such user.

    Raises UserError for a bad value, or when the change would leave no
    enabled administrator. Disabling a user or changing its password ends
    its sessions.
    """
    check_email(email)
    if role is not None:
        role = check_role(role).value
    hashed = hash_password(password) if password is not None else None
    async with conn.transaction():
        row = await _lock_user(conn, user_id)
        if row is None:
            return False
        stays_admin = (role or row[0]) == "admin" and not (
            disabled if disabled is not None else row[1]
        )
        if row[0] == "admin" and not stays_admin:
            if not await _other_admins(conn, user_id):
                raise UserError("this is the last administrator")
        await conn.execute(
            "UPDATE pgagent_watch.app_user SET"
            " email = coalesce(%s, email), role = coalesce(%s, role),"
            " disabled = coalesce(%s, disabled),"
            " password_hash = coalesce(%s, password_hash) WHERE id = %s",
            (email, role, disabled, hashed, user_id),
        )
        if disabled or hashed is not None:
            await conn.execute(
                "DELETE FROM pgagent_watch.auth_session WHERE user_id = %s",
                (user_id,),
            )
        if servers is not None:
            await set_grants(conn, user_id, servers)
    return True


async def delete_user(conn: AnyConn, user_id: int) -> bool:
    """Delete a user with its grants, tokens and sessions; False when absent.

    Raises UserError when it is the last enabled administrator.
    """
    async with conn.transaction():
        row = await _lock_user(conn, user_id)
        if row is None:
            return False
        if row[0] == "admin" and not row[1] and not await _other_admins(conn, user_id):
            raise UserError("this is the last administrator")
        await conn.execute(
            "DELETE FROM pgagent_watch.app_user WHERE id = %s", (user_id,)
        )
    return True


async def list_tokens(conn: AnyConn, user_id: int) -> list[TokenOut]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "SELECT id, user_id, name, created_at, last_used_at, revoked_at"
            " FROM pgagent_watch.api_token WHERE user_id = %s ORDER BY id",
            (user_id,),
        )
        return await cur.fetchall()  # type: ignore[return-value]


async def create_token_row(
    conn: AnyConn, user_id: int, name: str = ""
) -> dict[str, Any]:
    """Create a token; return its row, with the token under ``token`` (once)."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "INSERT INTO pgagent_watch.api_token (user_id, name, token_hash)"
            " VALUES (%s, %s, %s)"
            " RETURNING id, user_id, name, created_at, last_used_at, revoked_at",
            (user_id, name[:100], token_hash(token)),
        )
        row = await cur.fetchone()
    assert row is not None
    return {**row, "token": token}


async def revoke_token(conn: AnyConn, token_id: int, user_id: int | None) -> bool:
    """Revoke a token (of this user, unless None: any); False when none matched."""
    cur = await conn.execute(
        "UPDATE pgagent_watch.api_token SET revoked_at = now()"
        " WHERE id = %s AND (%s::integer IS NULL OR user_id = %s)"
        " AND revoked_at IS NULL",
        (token_id, user_id, user_id),
    )
    return cur.rowcount == 1
