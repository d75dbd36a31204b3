"""The HTTP metrics middleware labels by route template, never by the raw path."""

from __future__ import annotations

from typing import Any

import httpx
from fastapi import APIRouter, FastAPI
from prometheus_client import REGISTRY

from services.common.errors import NotFound
from services.common.ids import new_id
from services.common.observe import observe
from services.common.web import install_error_handlers


def sample(name: str, labels: dict[str, str]) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def app_for(service: str) -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)
    router = APIRouter()

    @router.get("/v1/users/{user_id}")
    async def get_user(user_id: str) -> dict[str, Any]:
        if user_id == "missing":
            raise NotFound("no such user")
        return {"user_id": user_id}

    @router.get("/v1/boom")
    async def boom() -> None:
        raise RuntimeError("boom")

    app.include_router(router)
    observe(app, service)
    return app


async def test_two_user_ids_land_in_one_route_series() -> None:
    service = f"svc-{new_id()}"
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app_for(service)), base_url="http://t") as client:
        assert (await client.get(f"/v1/users/{new_id()}")).status_code == 200
        assert (await client.get(f"/v1/users/{new_id()}")).status_code == 200
        assert (await client.get("/v1/users/missing")).status_code == 404
    labels = {"service": service, "method": "GET", "route": "/v1/users/{user_id}"}
    assert sample("courier_http_requests_total", {**labels, "status": "200"}) == 2
    assert sample("courier_http_requests_total", {**labels, "status": "404"}) == 1
    assert sample("courier_http_request_duration_seconds_count", labels) == 3
    series = [
        s
        for metric in REGISTRY.collect()
        if metric.name == "courier_http_requests"
        for s in metric.samples
        if s.labels.get("service") == service
    ]
    assert {s.labels["route"] for s in series} == {"/v1/users/{user_id}"}


async def test_unknown_paths_are_counted_as_unmatched() -> None:
    service = f"svc-{new_id()}"
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app_for(service)), base_url="http://t") as client:
        assert (await client.get(f"/nowhere/{new_id()}")).status_code == 404
    labels = {"service": service, "method": "GET", "route": "unmatched", "status": "404"}
    assert sample("courier_http_requests_total", labels) == 1


async def test_an_unhandled_error_counts_as_a_500() -> None:
    service = f"svc-{new_id()}"
    transport = httpx.ASGITransport(app=app_for(service), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        assert (await client.get("/v1/boom")).status_code == 500
    labels = {"service": service, "method": "GET", "route": "/v1/boom", "status": "500"}
    assert sample("courier_http_requests_total", labels) == 1


async def test_static_files_are_one_series(tmp_path: Any) -> None:
    from fastapi.staticfiles import StaticFiles

    (tmp_path / "index.html").write_text("<p>hi</p>")
    (tmp_path / "app.js").write_text("1")
    service = f"svc-{new_id()}"
    app = FastAPI()
    app.mount("/", StaticFiles(directory=tmp_path, html=True), name="web")
    observe(app, service)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        assert (await client.get("/")).status_code == 200
        assert (await client.get("/app.js")).status_code == 200
    labels = {"service": service, "method": "GET", "route": "static", "status": "200"}
    assert sample("courier_http_requests_total", labels) == 2


def test_build_info_names_the_service() -> None:
    observe(FastAPI(), "identity")
    info = [s for metric in REGISTRY.collect() if metric.name == "courier_build" for s in metric.samples]
    assert info
    assert info[0].labels["service"] == "identity"
    assert info[0].labels["version"]
