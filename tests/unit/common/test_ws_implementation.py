"""Every uvicorn server Courier starts uses the WebSocket implementation chosen by measurement."""

from __future__ import annotations

import ast
from pathlib import Path

import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from services.cli import WS_PROTOCOL

SERVICES = Path(__file__).resolve().parents[3] / "services"


def _uvicorn_calls() -> list[tuple[str, ast.Call]]:
    calls = []
    for path in sorted(SERVICES.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "uvicorn"
                and node.func.attr in ("run", "Config")
            ):
                calls.append((f"{path.relative_to(SERVICES.parent)}:{node.lineno}", node))
    return calls


def _ws_argument(call: ast.Call) -> str | None:
    for keyword in call.keywords:
        if keyword.arg != "ws":
            continue
        if isinstance(keyword.value, ast.Constant) and isinstance(keyword.value.value, str):
            return keyword.value.value
        if isinstance(keyword.value, ast.Name) and keyword.value.id == "WS_PROTOCOL":
            return WS_PROTOCOL
    return None


def test_every_uvicorn_server_names_the_chosen_implementation() -> None:
    calls = _uvicorn_calls()
    assert len(calls) >= 3  # courier dev, courier run, the gateway's inner server
    assert {where: _ws_argument(call) for where, call in calls} == {where: WS_PROTOCOL for where, _ in calls}


def test_the_chosen_implementation_is_websockets_sans_io() -> None:
    config = uvicorn.Config(FastAPI(), ws=WS_PROTOCOL, log_config=None)  # None: leave the logging of the tests alone
    config.load()
    assert config.ws_protocol_class is WebSocketsSansIOProtocol
