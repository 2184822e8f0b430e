"""What the page needs beyond the jobs API: a caught mail's HTML, framed safely.

A ``srcdoc`` frame inherits the page's Content-Security-Policy, which drops
a mail's inline styles; the mail would not look as it arrives. Served from
here, the HTML gets a policy of its own: no script, no request to anything
(images only as ``data:``), inline styles allowed, framed by the page only,
and sandboxed even when opened on its own.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path
from fastapi.responses import Response

from .deps import MAX_ID, ServiceDep, Who

router = APIRouter(tags=["alerts"])

MAIL_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
    "frame-ancestors 'self'; base-uri 'none'; form-action 'none'; sandbox"
)


@router.get("/api/mailcatcher/{mail_id}/html", response_class=Response)
async def caught_mail_html(
    mail_id: Annotated[int, Path(ge=1, le=MAX_ID)], service: ServiceDep, who: Who
) -> Response:
    """The HTML part of one caught mail (demo only; administrators only)."""
    alerts: Any = getattr(service, "alerts", None)
    catcher = getattr(alerts, "catcher", None)
    if catcher is None:
        raise HTTPException(404, "no mail catcher (it runs in the demo only)")
    if not who.is_admin:
        raise HTTPException(403, "the mail catcher is for administrators")
    for mail in catcher.list():
        if mail.get("id") == mail_id:
            return Response(
                str(mail.get("html") or ""),
                media_type="text/html; charset=utf-8",
                headers={
                    "Content-Security-Policy": MAIL_CSP,
                    "Cache-Control": "no-store",
                },
            )
    raise HTTPException(404, f"no caught mail {mail_id}")
