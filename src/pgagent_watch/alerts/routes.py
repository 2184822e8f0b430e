"""The alert API: subscriptions, the outbox, test messages, the mail catcher."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Path, Query, Request
from psycopg.rows import dict_row
from pydantic import BaseModel, Field

from .. import audit
from ..deps import ServiceDep, Who
from . import subscriptions
from .channels import DeliveryError
from .subscriptions import Subscription, SubscriptionError

if TYPE_CHECKING:
    from .manager import AlertService

router = APIRouter(tags=["alerts"])

MAX_ID = 2**31 - 1
_HTTP = {
    "BAD_REQUEST": 422,
    "FORBIDDEN": 403,
    "SERVER_NOT_FOUND": 404,
    "JOB_NOT_FOUND": 404,
    "SERVER_UNAVAILABLE": 503,
}


def _alerts(service: Any) -> AlertService:
    alerts = getattr(service, "alerts", None)
    if alerts is None:
        raise HTTPException(503, "alerts are not running")
    return alerts  # type: ignore[no-any-return]


def _fail(exc: SubscriptionError) -> HTTPException:
    return HTTPException(
        _HTTP.get(exc.code, 400), {"code": exc.code, "error": str(exc)}
    )


class SubscriptionIn(BaseModel):
    server_id: int = Field(ge=1, le=MAX_ID)
    job_id: int | None = Field(default=None, ge=1, le=MAX_ID)
    statuses: list[str] | None = Field(default=None, max_length=20)
    channel: str | None = Field(default=None, max_length=100)


class SubscriptionOut(BaseModel):
    id: int
    server_id: int
    job_id: int | None
    statuses: list[str]
    channel: str


@router.get("/api/subscriptions", response_model=list[SubscriptionOut])
async def list_subscriptions(service: ServiceDep, who: Who) -> list[Subscription]:
    """The caller's own subscriptions (none for the anonymous administrator)."""
    if who.user_id is None:
        return []
    async with service.state_pool.connection(timeout=10) as conn:
        return await subscriptions.list_for_user(conn, who.user_id)


@router.put("/api/subscriptions", response_model=SubscriptionOut)
async def put_subscription(
    body: SubscriptionIn, request: Request, service: ServiceDep, who: Who
) -> Subscription:
    """Create or replace the caller's subscription to a job (or every job).

    403 for the anonymous administrator (subscriptions need a user), 404 for
    an unknown server or job, 422 for an unknown status or channel.
    """
    try:
        return await _alerts(service).subscribe(
            who,
            body.server_id,
            body.job_id,
            body.statuses,
            body.channel,
            address=audit.client_address(request),
        )
    except SubscriptionError as exc:
        raise _fail(exc) from None


@router.delete("/api/subscriptions/{subscription_id}", status_code=204)
async def delete_subscription(
    subscription_id: Annotated[int, Path(ge=1, le=MAX_ID)],
    request: Request,
    service: ServiceDep,
    who: Who,
) -> None:
    """Delete one of the caller's subscriptions; 404 if it is not theirs."""
    if who.user_id is None:
        raise HTTPException(404, "no such subscription")
    async with service.state_pool.connection(timeout=10) as conn:
        if not await subscriptions.delete(conn, who.user_id, subscription_id):
            raise HTTPException(404, "no such subscription")
    await audit.record(
        service,
        who,
        "subscription.delete",
        request=request,
        target=f"subscription {subscription_id}",
    )


class AlertOut(BaseModel):
    id: int
    recipient: str
    channel: str
    state: str
    created_at: datetime
    sent_at: datetime | None
    attempts: int
    last_error: str | None
    subject: str | None
    job_name: str | None
    job_id: int | None
    run_id: int | None
    server_id: int
    status: str


_ALERT_COLUMNS = (
    "id, recipient, channel, state, created_at, sent_at, attempts, last_error,"
    " subject, job_name, job_id, run_id, server_id, status"
)


@router.get("/api/alerts", response_model=list[AlertOut])
async def list_alerts(
    service: ServiceDep,
    who: Who,
    state: Literal["pending", "sending", "sent", "failed", "dead"] | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> list[dict[str, Any]]:
    """Outbox rows, newest first: an administrator's all, anyone else's own."""
    visible = [s for s in service.servers if who.can_see(s)]
    async with service.state_pool.connection(timeout=10) as conn:
        cur = conn.cursor(row_factory=dict_row)
        # One constant statement: a NULL filter is no filter.
        await cur.execute(
            f"SELECT {_ALERT_COLUMNS} FROM pgagent_watch.alert"  # noqa: S608
            " WHERE (%(state)s::text IS NULL OR state = %(state)s)"
            " AND (%(user)s::integer IS NULL OR user_id = %(user)s)"
            " AND server_id = ANY(%(servers)s)"
            " ORDER BY id DESC LIMIT %(limit)s",
            {
                "state": state,
                # -1: nobody's (a non-admin always has a user id).
                "user": None if who.is_admin else (who.user_id or -1),
                "servers": visible,
                "limit": limit,
            },
        )
        return await cur.fetchall()


@router.post("/api/alerts/{alert_id}/resend", response_model=AlertOut)
async def resend_alert(
    alert_id: Annotated[int, Path(ge=1, le=2**63 - 1)],
    request: Request,
    service: ServiceDep,
    who: Who,
) -> dict[str, Any]:
    """Queue a failed, dead or sent alert again; 409 while it is still waiting."""
    async with service.state_pool.connection(timeout=10) as conn:
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(
            "SELECT user_id, state, server_id FROM pgagent_watch.alert WHERE id = %s",
            (alert_id,),
        )
        row = await cur.fetchone()
        if (
            row is None
            or not who.can_see(row["server_id"])
            or (not who.is_admin and row["user_id"] != who.user_id)
        ):
            raise HTTPException(404, "no such alert")
        if row["state"] in ("pending", "sending"):
            raise HTTPException(409, "this alert is still waiting to be sent")
        await cur.execute(
            "UPDATE pgagent_watch.alert SET state = 'pending', attempts = 0,"  # noqa: S608
            " not_before = now(), claimed_by = NULL, last_error = NULL"
            f" WHERE id = %s RETURNING {_ALERT_COLUMNS}",
            (alert_id,),
        )
        out = await cur.fetchone()
    _alerts(service).dispatcher.poke()
    assert out is not None
    await audit.record(
        service,
        who,
        "alert.resend",
        request=request,
        server_id=out["server_id"],
        target=f"alert {alert_id}",
    )
    return out


class TestIn(BaseModel):
    to: str | None = Field(default=None, max_length=320)
    channel: str | None = Field(default=None, max_length=100)


@router.post("/api/alerts/test")
async def send_test_alert(
    body: TestIn, request: Request, service: ServiceDep, who: Who
) -> dict[str, Any]:
    """Send one real message through a channel; answer with the server's reply.

    Administrators may send to any address, others to their own only. 502
    with the server's answer when it refused or could not be reached.
    """
    to = body.to or who.email
    by_email = body.channel in (None, subscriptions.EMAIL)
    if by_email and not to:
        raise HTTPException(422, "give an address to send the test to")
    if not who.is_admin and (not by_email or to != who.email):
        raise HTTPException(
            403, "you may send a test only by e-mail, to your own address"
        )
    await audit.record(
        service,
        who,
        "alert.test",
        request=request,
        target=body.channel or "e-mail",
        detail={"to": to},
    )
    try:
        answer = await _alerts(service).send_test(to, body.channel)
    except SubscriptionError as exc:
        raise _fail(exc) from None
    except DeliveryError as exc:
        raise HTTPException(
            502, {"ok": False, "error": str(exc), "permanent": exc.permanent}
        ) from None
    return {"ok": True, "answer": answer}


@router.get("/api/mailcatcher")
async def mail_catcher(service: ServiceDep, who: Who) -> list[dict[str, Any]]:
    """The demo mail catcher's messages, newest first; 404 outside the demo."""
    alerts = getattr(service, "alerts", None)
    if alerts is None or alerts.catcher is None:
        raise HTTPException(404, "no mail catcher (it runs in the demo only)")
    if not who.is_admin:
        raise HTTPException(403, "the mail catcher is for administrators")
    return alerts.catcher.list()  # type: ignore[no-any-return]
