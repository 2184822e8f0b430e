"""Users from the command line and for the demo: straight to the state database."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg

from .. import state, users
from ..access import Role
from ..config import Settings


@dataclass(frozen=True)
class NewUser:
    user_id: int
    name: str
    # The generated password, when none was given.
    password: str | None


async def _connect(settings: Settings) -> psycopg.AsyncConnection[Any]:
    conn = await psycopg.AsyncConnection.connect(
        settings.state_conninfo(application_name="pgagent-watch user"),
        autocommit=True,
    )
    await state.migrate(conn)
    return conn


async def _audit(conn: psycopg.AsyncConnection[Any], action: str, target: str) -> None:
    await conn.execute(
        "INSERT INTO pgagent_watch.audit (user_name, action, target, address)"
        " VALUES ('command line', %s, %s, 'local')",
        (action, target),
    )


async def add_user(
    settings: Settings,
    name: str,
    role: Role | str,
    *,
    email: str | None = None,
    servers: list[str] | None = None,
    password: str | None = None,
) -> NewUser:
    """Create a user in the state database; generate a password if none given.

    Raises users.UserError for a bad or taken name, address, role or password.
    """
    generated = None if password else users.generate_password()
    async with await _connect(settings) as conn:
        user_id = await users.create_user(
            conn,
            name,
            role,
            email=email,
            password=password or generated,
            servers=servers or None,
        )
        await _audit(conn, "user.create", name)
    return NewUser(user_id, name, generated)


async def list_users(settings: Settings) -> list[users.UserOut]:
    async with await _connect(settings) as conn:
        return await users.list_users(conn)


async def new_token(settings: Settings, name: str, label: str = "cli") -> str:
    """A new API token for the user ``name``; raises users.UserError if none."""
    async with await _connect(settings) as conn:
        found = await users.list_users(conn, name=name)
        if not found:
            raise users.UserError(f"no user named {name!r}")
        token = await users.create_token(
            conn,
            found[0]["id"],
            label,
        )
        await _audit(conn, "token.create", name)
    return token
