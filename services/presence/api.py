"""HTTP route of the presence service: ``GET /v1/presence?user_ids=a,b``."""

# No ``from __future__ import annotations`` here: FastAPI reads the route signatures at runtime, and
# the ``Caller`` dependency refers to ``auth``, a local of ``build_router``.

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query

from services.common.errors import InvalidRequest
from services.common.tokens import Principal
from services.common.web import Authenticate, TextRoute
from services.presence import domain
from services.presence.app import PresenceTracker


def build_router(tracker: PresenceTracker, *, auth: Authenticate) -> APIRouter:
    router = APIRouter(tags=["presence"], route_class=TextRoute)
    Caller = Annotated[Principal, Depends(auth)]

    @router.get("/v1/presence")
    async def presence(
        _caller: Caller,
        user_ids: Annotated[str | None, Query(description="Comma-separated, 1 to 200 user ids.")] = None,
    ) -> dict[str, Any]:
        """``{presence: [{user_id, online, last_seen}]}`` in the order asked, duplicates dropped."""
        if user_ids is None:
            raise InvalidRequest("user_ids is required: a comma-separated list of 1 to 200 user ids")
        return {"presence": await tracker.status(domain.parse_user_ids(user_ids))}

    return router
