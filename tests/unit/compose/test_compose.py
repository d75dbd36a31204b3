"""The composition root: which role reaches which other role, in process or over HTTP."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest
from starlette.routing import Route, WebSocketRoute

from services import compose
from services.common.settings import Settings
from services.compose import ROLES, Process
from services.delivery.hub import Hub
from services.message.workers import OutboxRelay

CALLS = {
    "identity": set(),
    "conversation": {"identity", "message"},
    "presence": set(),
    "file": {"conversation"},
    "message": {"conversation", "file"},
    "delivery": {"message", "conversation", "presence"},
}
"""The roles each role calls when it runs alone (docs/design.md: who calls whom)."""


def paths(process: Process) -> set[str]:
    return {
        route.path
        for router in process.routers
        for route in router.routes
        if isinstance(route, Route | WebSocketRoute)  # FastAPI's and the internal calls' plain ones
    }


def distributed(tmp_path: Path) -> Settings:
    return Settings(
        mode="dev",
        data_dir=tmp_path,
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'courier.db'}",
        node_name="delivery-0",
        ring={"nodes": {"delivery-0": "http://127.0.0.1:9"}},
    )


@pytest.mark.parametrize("role", ROLES)
def test_a_role_alone_calls_the_roles_it_needs_over_http_and_serves_its_internal_api(role: str, tmp_path: Path) -> None:
    process = Process(distributed(tmp_path), {role})
    assert process.wiring.remote_roles == CALLS[role]
    internal = {path for path in paths(process) if path.startswith("/internal/")}
    assert internal, f"{role} serves no internal API"
    assert not isinstance(process.wiring.pusher, Hub), "a node of a ring pushes through the ring"


def test_courier_dev_composes_every_role_in_process_and_serves_no_internal_api(tmp_path: Path) -> None:
    process = Process(Settings(mode="dev", data_dir=tmp_path), ROLES)
    assert process.wiring.remote_roles == set()
    assert process.wiring.pusher is process.wiring.hub
    served = paths(process)
    one_of_each_role = {
        "/v1/auth/login",
        "/v1/conversations",
        "/v1/presence",
        "/v1/files/uploads",
        "/v1/conversations/{conversation_id}/messages",
        "/v1/ws",
    }
    assert one_of_each_role <= served
    assert not {path for path in served if path.startswith("/internal/")}


def outbox_relay(process: Process) -> OutboxRelay:
    relay = process.built.loops["outbox-relay"].__self__  # type: ignore[attr-defined]
    assert isinstance(relay, OutboxRelay)
    return relay


def test_only_a_process_that_holds_the_log_and_every_socket_commits_events_without_outbox_rows(tmp_path: Path) -> None:
    assert not outbox_relay(Process(Settings(mode="dev", data_dir=tmp_path), ROLES)).keeps_rows
    assert outbox_relay(Process(distributed(tmp_path), ROLES)).keeps_rows, "other delivery nodes on its ring"
    assert outbox_relay(Process(distributed(tmp_path), {"message"})).keeps_rows, "the sockets are elsewhere"


def test_two_roles_in_one_process_call_each_other_in_process(tmp_path: Path) -> None:
    process = Process(distributed(tmp_path), {"conversation", "file", "message"})
    assert process.wiring.remote_roles == {"identity"}


def test_a_delivery_node_needs_its_name_on_the_ring(tmp_path: Path) -> None:
    settings = distributed(tmp_path).model_copy(update={"node_name": ""})
    with pytest.raises(SystemExit, match="COURIER_NODE_NAME"):
        Process(settings, {"delivery"})


def test_a_role_alone_needs_a_database_server(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="COURIER_DATABASE_URL"):
        Process(Settings(mode="dev", data_dir=tmp_path), {"message"})


def test_unknown_roles_are_refused() -> None:
    with pytest.raises(ValueError, match="roles are some of"):
        Process(Settings(mode="dev"), {"messages"})


async def test_a_loop_that_does_not_end_when_stopped_does_not_keep_the_process_from_stopping_what_it_uses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A fan-out loop stuck after its cancellation must not keep its Kafka consumer in the group: what the
    # loops use is stopped all the same, and the stuck loop is named.
    monkeypatch.setattr(compose, "LOOP_STOP_S", 0.2)
    process = Process(Settings(mode="dev", data_dir=tmp_path), {"presence"})
    stopped: list[str] = []
    running, release = asyncio.Event(), asyncio.Event()

    async def stubborn() -> None:
        running.set()
        while not release.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await release.wait()

    async def consumer_stop() -> None:
        stopped.append("consumer")

    process.built.loops["stubborn"] = stubborn
    process.built.on_stop.append(consumer_stop)
    await process.start()
    async with asyncio.timeout(30):
        await running.wait()
        await process.stop()
    release.set()

    assert stopped == ["consumer"]
    assert "loop stubborn did not end" in caplog.text
