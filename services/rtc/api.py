"""HTTP route of rtc: ``GET /v1/rtc/ice-servers`` for the calling user."""

# No postponed annotations here: FastAPI must resolve the route signature, which uses the local
# ``Caller`` alias bound to the ``auth`` dependency this router is built with.

import time
from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, Depends, Response
from pydantic import BaseModel

from services.common.settings import RtcSettings
from services.common.tokens import Principal
from services.common.web import Authenticate, TextRoute
from services.rtc.domain import ice_servers


class IceServerOut(BaseModel):
    urls: list[str]
    username: str | None = None
    credential: str | None = None


class IceServersOut(BaseModel):
    ice_servers: list[IceServerOut]
    ttl: int


def create_router(rtc: RtcSettings, *, auth: Authenticate, clock: Callable[[], float] = time.time) -> APIRouter:
    router = APIRouter(tags=["rtc"], route_class=TextRoute)
    Caller = Annotated[Principal, Depends(auth)]

    @router.get("/v1/rtc/ice-servers", response_model_exclude_none=True)
    async def get_ice_servers(principal: Caller, response: Response) -> IceServersOut:
        servers = ice_servers(
            stun_urls=rtc.stun_urls,
            turn_urls=rtc.turn_urls,
            turn_secret=rtc.turn_secret,
            ttl_s=rtc.turn_ttl_s,
            user_id=principal.user_id,
            now=clock(),
        )
        # The TURN credential is a bearer secret for its lifetime: keep it out of shared caches.
        response.headers["Cache-Control"] = "no-store"
        return IceServersOut(
            ice_servers=[
                IceServerOut(urls=list(s.urls), username=s.username, credential=s.credential) for s in servers
            ],
            ttl=rtc.turn_ttl_s,
        )

    return router
