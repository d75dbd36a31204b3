"""Composition of rtc: its router, from the rtc settings."""

from __future__ import annotations

from fastapi import APIRouter

from services.common.settings import Settings
from services.common.web import Authenticate
from services.rtc.api import create_router


def build_rtc(settings: Settings, *, auth: Authenticate) -> APIRouter:
    return create_router(settings.rtc, auth=auth)
