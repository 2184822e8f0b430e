"""Sign-in and sign-out pages, ``/api/me``, users, tokens and the audit trail.

The pages are plain HTML forms rendered here (no script, so the strict CSP
holds); every value put into them is escaped. The JSON API is for the page's
own script and for scripts with an API token.
"""

from __future__ import annotations

import html
import logging
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import (
    APIRouter,
    Depends,
    Form,
    HTTPException,
    Path,
    Query,
    Request,
    Response,
)
from fastapi.responses import HTMLResponse, RedirectResponse
from pydantic import BaseModel, ConfigDict, Field

from .. import audit, users
from ..access import Principal, Role
from ..deps import MAX_ID, Admin, ServiceDep, Who
from ..service import Service
from .sessions import CSRF_HEADER, Authenticated, SignInRefused, csrf_ok

logger = logging.getLogger("pgagent_watch.auth")

router = APIRouter()

UserIdPath = Annotated[int, Path(ge=1, le=MAX_ID, description="a user id")]
TokenIdPath = Annotated[int, Path(ge=1, le=MAX_ID, description="an API token id")]
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$"
SERVER_PATTERN = r"^(\*|[A-Za-z0-9][A-Za-z0-9_.-]{0,63})$"
_LOCAL = r"[^@\s<>\"',;\x00-\x1f\x7f]"
EMAIL_PATTERN = rf"^{_LOCAL}{{1,64}}@{_LOCAL}{{1,255}}$"
# Free text: PostgreSQL text holds no NUL, and no control character belongs.
TEXT_PATTERN = r"^[^\x00-\x1f\x7f]*$"
ServerName = Annotated[str, Field(pattern=SERVER_PATTERN)]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class UserIn(_In):
    name: str = Field(pattern=NAME_PATTERN)
    email: str | None = Field(default=None, pattern=EMAIL_PATTERN, max_length=320)
    role: Role = Role.VIEWER
    # None: a password is generated and returned once.
    password: str | None = Field(default=None, min_length=8, max_length=1024)
    # Server names, or "*" for every server (the default).
    servers: list[ServerName] = Field(default_factory=lambda: ["*"], max_length=1000)


class UserPatch(_In):
    email: str | None = Field(default=None, pattern=EMAIL_PATTERN, max_length=320)
    role: Role | None = None
    disabled: bool | None = None
    password: str | None = Field(default=None, min_length=8, max_length=1024)
    servers: list[ServerName] | None = Field(default=None, max_length=1000)


class GrantsIn(_In):
    servers: list[ServerName] = Field(max_length=1000)


class TokenIn(_In):
    name: str = Field(default="", max_length=100, pattern=TEXT_PATTERN)


class UserOut(BaseModel):
    id: int
    name: str
    email: str | None
    role: str
    disabled: bool
    servers: list[str]
    created_at: datetime


class CreatedUserOut(UserOut):
    # Only when the password was generated: shown this once.
    password: str | None = None


class TokenOut(BaseModel):
    id: int
    user_id: int
    name: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class CreatedTokenOut(TokenOut):
    token: str


class MeOut(BaseModel):
    user_id: int | None
    name: str
    role: str
    email: str | None
    # Send it back in X-CSRF-Token on every POST, PUT, PATCH and DELETE.
    csrf_token: str | None
    # The ids of the servers this user may see.
    servers: list[int]
    method: str


class AuditOut(BaseModel):
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


# -- pages ---------------------------------------------------------------------


def _safe_next(value: str | None) -> str:
    """A local path to go to after sign-in; anything else is the start page."""
    if (
        not value
        or not value.startswith("/")
        or value.startswith(("//", "/\\"))
        # Browsers drop tabs and newlines: "/\t/evil.example" is "//evil.example".
        or any(c == "\\" or c.isspace() or not c.isprintable() for c in value)
        or len(value) > 500
    ):
        return "/"
    return value


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    text = (
        '<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(title)} · pgagent-watch</title>\n"
        '<link rel="stylesheet" href="/static/login.css">\n</head>\n'
        f'<body>\n<main class="auth">\n<h1>pgagent-watch</h1>\n{body}\n</main>\n'
        "</body>\n</html>\n"
    )
    return HTMLResponse(text, status, headers={"Cache-Control": "no-store"})


def _login_page(
    next_url: str, message: str | None = None, status: int = 200
) -> HTMLResponse:
    error = (
        f'<p class="error" role="alert">{html.escape(message)}</p>' if message else ""
    )
    return _page(
        "Sign in",
        f"<h2>Sign in</h2>{error}"
        '<form method="post" action="/login">'
        f'<input type="hidden" name="next" value="{html.escape(next_url)}">'
        '<label>Name <input name="name" autocomplete="username" required'
        ' maxlength="64" autofocus></label>'
        '<label>Password <input name="password" type="password" required'
        ' autocomplete="current-password" maxlength="1024"></label>'
        '<button type="submit">Sign in</button></form>',
        status,
    )


def _found(request: Request) -> Authenticated | None:
    found = getattr(request.state, "auth", None)
    return found if isinstance(found, Authenticated) else None


@router.get("/login", include_in_schema=False)
async def login_page(
    request: Request, service: ServiceDep, next: str | None = None
) -> Response:
    who = await service.authenticate_request(request)
    found = _found(request)
    if who is not None and found is not None and found.method != "anonymous":
        return RedirectResponse(_safe_next(next), 303)
    return _login_page(_safe_next(next))


@router.post("/login", include_in_schema=False)
async def login(
    request: Request,
    service: ServiceDep,
    name: Annotated[str, Form(max_length=200)],
    password: Annotated[str, Form(max_length=1024)],
    next: Annotated[str, Form(max_length=1000)] = "/",
) -> Response:
    """Check the form; on success set the session cookie and go on."""
    target = _safe_next(next)
    if not service.auth.same_origin(
        request.headers.get("origin"), request.headers.get("host")
    ):
        return _login_page(target, "sign in from this service's own page", 403)
    await service.authenticate_request(request)  # resolves the client address
    address = audit.client_address(request)
    if not service.state_ready.is_set():
        return _login_page(target, "the service is starting: try again", 503)
    try:
        cookie, who = await service.auth.sign_in(name, password, address)
    except SignInRefused as exc:
        await audit.record(
            service,
            name,
            "auth.sign_in",
            address=address,
            ok=False,
            detail={"reason": str(exc)},
        )
        status = 429 if exc.retry_after else 401
        refused = _login_page(target, str(exc), status)
        if exc.retry_after:
            refused.headers["Retry-After"] = str(int(exc.retry_after) + 1)
        return refused
    await audit.record(service, who, "auth.sign_in", address=address)
    previous = _found(request)
    if previous is not None and previous.session_hash is not None:
        # A new sign-in in the same browser replaces its old session.
        await service.auth.sign_out(previous.session_hash)
    response = RedirectResponse(target, 303)
    response.set_cookie(
        service.auth.cookie_name,
        cookie,
        httponly=True,
        samesite="lax",
        secure=service.auth.cookie_secure,
        path="/",
    )
    return response


@router.get("/logout", include_in_schema=False)
async def logout_page(request: Request, service: ServiceDep) -> Response:
    await service.authenticate_request(request)
    found = _found(request)
    if found is None or found.method != "session" or found.csrf_token is None:
        return RedirectResponse("/login", 303)
    return _page(
        "Sign out",
        f"<h2>Sign out</h2><p>Signed in as {html.escape(found.principal.name)}.</p>"
        '<form method="post" action="/logout">'
        '<input type="hidden" name="csrf_token"'
        f' value="{html.escape(found.csrf_token)}">'
        '<button type="submit">Sign out</button></form>',
    )


async def _end_session(
    request: Request, service: Service, found: Authenticated, response: Response
) -> Response:
    if found.session_hash is not None:
        await service.auth.sign_out(found.session_hash)
        await service.auth.check_sockets(found.session_hash)
    await audit.record(service, found.principal, "auth.sign_out", request=request)
    response.delete_cookie(
        service.auth.cookie_name,
        path="/",
        httponly=True,
        samesite="lax",
        secure=service.auth.cookie_secure,
    )
    return response


@router.post("/logout", include_in_schema=False)
async def logout(
    request: Request,
    service: ServiceDep,
    csrf_token: Annotated[str, Form(max_length=200)] = "",
) -> Response:
    """The sign-out form: ends the session, clears the cookie."""
    await service.authenticate_request(request)
    found = _found(request)
    if found is None or found.method != "session":
        return RedirectResponse("/login", 303)
    if not found.csrf_token or csrf_token != found.csrf_token:
        raise HTTPException(403, "missing or wrong CSRF token")
    return await _end_session(request, service, found, RedirectResponse("/login", 303))


@router.post("/api/logout", status_code=204, tags=["auth"])
async def api_logout(request: Request, service: ServiceDep, who: Who) -> Response:
    """End the page's session (send X-CSRF-Token); a no-op for API tokens."""
    found = _found(request)
    assert found is not None
    return await _end_session(request, service, found, Response(status_code=204))


@router.get("/api/me", response_model=MeOut, tags=["auth"])
async def me(request: Request, service: ServiceDep, who: Who) -> dict[str, Any]:
    """Who is signed in, their role, the servers they see and the CSRF token.

    The page sends ``csrf_token`` back in ``X-CSRF-Token`` on every
    state-changing request; it is null for API tokens, which need none.
    """
    found = _found(request)
    assert found is not None
    return {
        "user_id": who.user_id,
        "name": who.name,
        "role": who.role.value,
        "email": who.email,
        "csrf_token": found.csrf_token,
        "servers": who.visible(service.servers),
        "method": found.method,
    }


class PasswordIn(_In):
    current_password: str = Field(max_length=1024)
    new_password: str = Field(min_length=8, max_length=1024)


@router.post("/api/me/password", status_code=204, tags=["auth"])
async def change_password(
    body: PasswordIn, request: Request, service: ServiceDep, who: Who
) -> Response:
    """Change your own password; every session of yours ends (sign in again).

    403 when the current password is wrong; API tokens stay valid.
    """
    if who.user_id is None:
        raise HTTPException(409, "create a user first")
    address = audit.client_address(request)
    throttle = service.auth.throttle
    wait = throttle.wait(who.name, address)
    if wait > 0:
        raise HTTPException(
            429,
            "too many wrong passwords: wait and try again",
            headers={"Retry-After": str(int(wait) + 1)},
        )
    async with service.state_pool.connection(timeout=5) as conn:
        user_id = await users.check_credentials(conn, who.name, body.current_password)
        if user_id != who.user_id:
            throttle.failed(who.name, address)
            await audit.record(
                service,
                who,
                "user.password",
                request=request,
                target=who.name,
                ok=False,
            )
            raise HTTPException(403, "the current password is wrong")
        try:
            await users.update_user(conn, who.user_id, password=body.new_password)
        except users.UserError as exc:
            raise _user_error(exc) from None
    await service.auth.check_sockets()
    await audit.record(service, who, "user.password", request=request, target=who.name)
    return Response(status_code=204)


# -- users (administrators) ---------------------------------------------------


def _user_error(exc: users.UserError) -> HTTPException:
    message = str(exc)
    return HTTPException(409 if "exists already" in message else 422, message)


@router.get("/api/users", response_model=list[UserOut], tags=["users"])
async def list_users(service: ServiceDep, who: Admin) -> list[users.UserOut]:
    """Every user with their role and granted servers."""
    async with service.state_pool.connection(timeout=5) as conn:
        return await users.list_users(conn)


@router.post(
    "/api/users", response_model=CreatedUserOut, status_code=201, tags=["users"]
)
async def create_user(
    body: UserIn, request: Request, service: ServiceDep, who: Admin
) -> dict[str, Any]:
    """Create a user; without a password one is generated and returned once."""
    password = body.password or users.generate_password()
    try:
        async with service.state_pool.connection(timeout=5) as conn:
            user_id = await users.create_user(
                conn,
                body.name,
                body.role,
                email=body.email,
                password=password,
                servers=list(body.servers),
            )
            created = await users.get_user(conn, user_id)
    except users.UserError as exc:
        raise _user_error(exc) from None
    service.forget_users_exist()
    await audit.record(
        service,
        who,
        "user.create",
        request=request,
        target=body.name,
        detail={"role": body.role.value, "servers": list(body.servers)},
    )
    assert created is not None
    return {**created, "password": None if body.password else password}


@router.get("/api/users/{user_id}", response_model=UserOut, tags=["users"])
async def get_user(
    user_id: UserIdPath, service: ServiceDep, who: Admin
) -> users.UserOut:
    async with service.state_pool.connection(timeout=5) as conn:
        found = await users.get_user(conn, user_id)
    if found is None:
        raise HTTPException(404, f"no user with id {user_id}")
    return found


@router.patch("/api/users/{user_id}", response_model=UserOut, tags=["users"])
async def update_user(
    user_id: UserIdPath,
    body: UserPatch,
    request: Request,
    service: ServiceDep,
    who: Admin,
) -> users.UserOut:
    """Change a user's address, role, password, grants, or disable it.

    Disabling a user or changing its password ends its sessions; the last
    enabled administrator cannot be demoted or disabled, and nobody can
    disable or demote themselves (422).
    """
    if user_id == who.user_id and (body.disabled or body.role not in (None, who.role)):
        raise HTTPException(422, "you cannot disable or demote yourself")
    try:
        async with service.state_pool.connection(timeout=5) as conn:
            changed = await users.update_user(
                conn,
                user_id,
                email=body.email,
                role=body.role.value if body.role else None,
                disabled=body.disabled,
                password=body.password,
                servers=list(body.servers) if body.servers is not None else None,
            )
            found = await users.get_user(conn, user_id) if changed else None
    except users.UserError as exc:
        raise _user_error(exc) from None
    if found is None:
        raise HTTPException(404, f"no user with id {user_id}")
    await service.auth.check_sockets()
    await audit.record(
        service,
        who,
        "user.update",
        request=request,
        target=found["name"],
        detail=body.model_dump(exclude_none=True, mode="json"),
    )
    return found


@router.put("/api/users/{user_id}/grants", response_model=UserOut, tags=["users"])
async def set_grants(
    user_id: UserIdPath,
    body: GrantsIn,
    request: Request,
    service: ServiceDep,
    who: Admin,
) -> users.UserOut:
    """Replace the servers (by name, or "*") a user may see."""
    async with service.state_pool.connection(timeout=5) as conn:
        if await users.get_user(conn, user_id) is None:
            raise HTTPException(404, f"no user with id {user_id}")
        try:
            await users.set_grants(conn, user_id, list(body.servers))
        except users.UserError as exc:
            raise _user_error(exc) from None
        found = await users.get_user(conn, user_id)
    assert found is not None
    await service.auth.check_sockets()
    await audit.record(
        service,
        who,
        "user.grants",
        request=request,
        target=found["name"],
        detail={"servers": list(body.servers)},
    )
    return found


@router.delete("/api/users/{user_id}", status_code=204, tags=["users"])
async def delete_user(
    user_id: UserIdPath, request: Request, service: ServiceDep, who: Admin
) -> Response:
    """Delete a user with its grants, tokens and sessions (the audit trail stays).

    Nobody deletes themselves (422).
    """
    if user_id == who.user_id:
        raise HTTPException(422, "you cannot delete yourself")
    try:
        async with service.state_pool.connection(timeout=5) as conn:
            found = await users.get_user(conn, user_id)
            deleted = found is not None and await users.delete_user(conn, user_id)
    except users.UserError as exc:
        raise _user_error(exc) from None
    if not deleted or found is None:
        raise HTTPException(404, f"no user with id {user_id}")
    await service.auth.check_sockets()
    await audit.record(
        service, who, "user.delete", request=request, target=found["name"]
    )
    return Response(status_code=204)


# -- API tokens (everyone's own) ----------------------------------------------


def _need_user(who: Principal) -> int:
    if who.user_id is None:
        raise HTTPException(409, "create a user first: tokens belong to users")
    return who.user_id


@router.get("/api/tokens", response_model=list[TokenOut], tags=["tokens"])
async def list_tokens(service: ServiceDep, who: Who) -> list[users.TokenOut]:
    """Your own API tokens (never the tokens themselves)."""
    if who.user_id is None:
        return []
    async with service.state_pool.connection(timeout=5) as conn:
        return await users.list_tokens(conn, who.user_id)


@router.post(
    "/api/tokens", response_model=CreatedTokenOut, status_code=201, tags=["tokens"]
)
async def create_token(
    body: TokenIn, request: Request, service: ServiceDep, who: Who
) -> dict[str, Any]:
    """Create an API token for yourself: the answer holds it, this once only."""
    user_id = _need_user(who)
    async with service.state_pool.connection(timeout=5) as conn:
        row = await users.create_token_row(conn, user_id, body.name)
    await audit.record(
        service, who, "token.create", request=request, target=f"token {row['id']}"
    )
    return row


@router.delete("/api/tokens/{token_id}", status_code=204, tags=["tokens"])
async def revoke_token(
    token_id: TokenIdPath, request: Request, service: ServiceDep, who: Who
) -> Response:
    """Revoke one of your tokens (an administrator: anyone's)."""
    async with service.state_pool.connection(timeout=5) as conn:
        done = await users.revoke_token(
            conn, token_id, None if who.is_admin else _need_user(who)
        )
    if not done:
        raise HTTPException(404, f"no token with id {token_id}")
    await service.auth.check_sockets()
    await audit.record(
        service, who, "token.revoke", request=request, target=f"token {token_id}"
    )
    return Response(status_code=204)


# -- the audit trail (administrators) -----------------------------------------


@router.get("/api/audit", response_model=list[AuditOut], tags=["audit"])
async def read_audit(
    service: ServiceDep,
    who: Admin,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    before_id: Annotated[int | None, Query(ge=1, le=2**63 - 1)] = None,
    action: Annotated[str | None, Query(max_length=64, pattern=TEXT_PATTERN)] = None,
    user: Annotated[str | None, Query(max_length=100, pattern=TEXT_PATTERN)] = None,
) -> list[audit.AuditEntry]:
    """The newest entries first; page with ``before_id``."""
    return await audit.entries(
        service, limit=limit, before_id=before_id, action=action, user_name=user
    )


def _cell(value: Any) -> str:
    if isinstance(value, datetime):
        value = value.isoformat(timespec="seconds")
    return f"<td>{html.escape('' if value is None else str(value))}</td>"


async def _form_admin(request: Request) -> Principal:
    """An administrator posting a form of the admin page with its CSRF token.

    The token comes in the ``csrf_token`` field (or ``X-CSRF-Token``);
    Bearer-token requests need none. 401, 403 otherwise.
    """
    service: Service = request.app.state.service
    who = await service.authenticate_request(request)
    found = _found(request)
    if who is None or found is None:
        raise HTTPException(401, "sign in or give an API token")
    sent = request.headers.get(CSRF_HEADER)
    if sent is None:
        form = await request.form()
        field = form.get("csrf_token")
        sent = field if isinstance(field, str) else None
    if not csrf_ok(found, sent):
        raise HTTPException(403, "missing or wrong CSRF token")
    if not who.is_admin:
        raise HTTPException(403, "only an administrator may do this")
    return who


FormAdmin = Annotated[Principal, Depends(_form_admin)]


def _user_row(u: users.UserOut, csrf: str) -> str:
    cells = "".join(_cell(u[k]) for k in ("name", "email", "role"))
    cells += _cell(", ".join(u["servers"]))
    hidden = f'<input type="hidden" name="csrf_token" value="{html.escape(csrf)}">'
    toggle = "enable" if u["disabled"] else "disable"
    actions = (
        f'<form method="post" action="/admin/users/{u["id"]}/{toggle}"'
        f' class="inline">{hidden}<button type="submit">{toggle}</button></form>'
        f'<form method="post" action="/admin/users/{u["id"]}/delete"'
        f' class="inline">{hidden}<button type="submit" class="danger">delete'
        "</button></form>"
    )
    state = "disabled" if u["disabled"] else "active"
    return f"<tr>{cells}{_cell(state)}<td>{actions}</td></tr>"


async def _admin_view(
    service: Service, who: Principal, csrf: str, notice: str = "", status: int = 200
) -> HTMLResponse:
    async with service.state_pool.connection(timeout=5) as conn:
        all_users = await users.list_users(conn)
    entries = await audit.entries(service, limit=200)
    user_rows = "".join(_user_row(u, csrf) for u in all_users)
    audit_rows = "".join(
        "<tr>"
        + "".join(
            _cell(e[k])
            for k in ("at", "user_name", "action", "ok", "server_id", "target")
        )
        + _cell(e["address"])
        + "</tr>"
        for e in entries
    )
    roles = "".join(f'<option value="{r.value}">{r.value}</option>' for r in Role)
    hidden = f'<input type="hidden" name="csrf_token" value="{html.escape(csrf)}">'
    return _page(
        "Administration",
        f'<p><a href="/">Jobs</a> · Signed in as {html.escape(who.name)} ·'
        ' <a href="/logout">Sign out</a></p>'
        + (f'<p class="notice" role="status">{notice}</p>' if notice else "")
        + "<h2>Users</h2><table><thead><tr><th>Name</th><th>Address</th>"
        "<th>Role</th><th>Servers</th><th>State</th><th></th></tr></thead>"
        f"<tbody>{user_rows}</tbody></table>"
        '<h3>New user</h3><form method="post" action="/admin/users">'
        f"{hidden}"
        '<label>Name <input name="name" required maxlength="64"></label>'
        '<label>Address <input name="email" type="email" maxlength="320"></label>'
        f'<label>Role <select name="role">{roles}</select></label>'
        '<label>Servers <input name="servers" value="*"'
        ' title="server names, separated by commas; * for every server"></label>'
        '<button type="submit">Create (the password is shown once)</button></form>'
        "<h2>Audit</h2><table><thead><tr><th>When</th><th>Who</th><th>What</th>"
        "<th>OK</th><th>Server</th><th>Target</th><th>From</th></tr></thead>"
        f"<tbody>{audit_rows}</tbody></table>",
        status,
    )


@router.get("/admin", include_in_schema=False)
async def admin_page(request: Request, service: ServiceDep) -> Response:
    """Users (create, disable, delete) and the latest audit entries."""
    who = await service.authenticate_request(request)
    found = _found(request)
    if who is None or found is None:
        return RedirectResponse("/login?next=/admin", 303)
    if not who.is_admin:
        return _page("Forbidden", "<p>Only an administrator may see this.</p>", 403)
    return await _admin_view(service, who, found.csrf_token or "")


@router.post("/admin/users", tags=["admin page"], response_class=HTMLResponse)
async def admin_create_user(
    request: Request,
    service: ServiceDep,
    who: FormAdmin,
    name: Annotated[str, Form(max_length=64)],
    email: Annotated[str, Form(max_length=320)] = "",
    role: Annotated[Role, Form()] = Role.VIEWER,
    servers: Annotated[str, Form(max_length=10_000)] = "*",
) -> HTMLResponse:
    """The admin page's form: create a user; the page shows its password once."""
    found = _found(request)
    csrf = (found.csrf_token if found else None) or ""
    grants = [s.strip() for s in servers.split(",") if s.strip()] or ["*"]
    password = users.generate_password()
    try:
        for grant in grants:
            if grant != "*" and not users.valid_name(grant):
                raise users.UserError(f"not a server name: {grant[:80]!r}")
        async with service.state_pool.connection(timeout=5) as conn:
            await users.create_user(
                conn, name, role, email=email or None, password=password, servers=grants
            )
    except users.UserError as exc:
        return await _admin_view(service, who, csrf, html.escape(str(exc)), 422)
    service.forget_users_exist()
    await audit.record(
        service,
        who,
        "user.create",
        request=request,
        target=name,
        detail={"role": role.value, "servers": grants},
    )
    notice = (
        f"Created {html.escape(name)}. Password (shown this once):"
        f" <code>{html.escape(password)}</code>"
    )
    return await _admin_view(service, who, csrf, notice, 201)


@router.post("/admin/users/{user_id}/{change}", tags=["admin page"])
async def admin_change_user(
    user_id: UserIdPath,
    change: Literal["enable", "disable", "delete"],
    request: Request,
    service: ServiceDep,
    who: FormAdmin,
) -> Response:
    """The admin page's buttons: enable, disable or delete a user."""
    if user_id == who.user_id:
        raise HTTPException(422, "you cannot disable or delete yourself")
    try:
        async with service.state_pool.connection(timeout=5) as conn:
            found = await users.get_user(conn, user_id)
            if found is None:
                raise HTTPException(404, f"no user with id {user_id}")
            if change == "delete":
                await users.delete_user(conn, user_id)
            else:
                await users.update_user(conn, user_id, disabled=change == "disable")
    except users.UserError as exc:
        raise _user_error(exc) from None
    await service.auth.check_sockets()
    action = "user.delete" if change == "delete" else "user.update"
    await audit.record(
        service,
        who,
        action,
        request=request,
        target=found["name"],
        detail={} if change == "delete" else {"disabled": change == "disable"},
    )
    return RedirectResponse("/admin", 303)
