"""Driving an app's ``/v1/ws`` as raw ASGI, without a server or a thread: the connection's scope."""

from __future__ import annotations

from typing import Any


def websocket_scope(token: str, *, headers: list[tuple[bytes, bytes]] | None = None) -> dict[str, Any]:
    """The scope of a client opening ``/v1/ws`` from loopback with ``token`` in the query string."""
    return {
        "type": "websocket",
        "asgi": {"version": "3.0"},
        "scheme": "ws",
        "path": "/v1/ws",
        "raw_path": b"/v1/ws",
        "root_path": "",
        "query_string": f"access_token={token}".encode(),
        "headers": headers or [],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 80),
        "subprotocols": [],
    }
