"""``python -m bench.internal_stream``: the CPU one internal call costs both processes, over HTTP and over a stream.

A server process (uvicorn on loopback, as the services run: uvloop, httptools, Courier's WebSocket protocol) serves
one internal call (``bench.internal_call``'s, with the error handlers and the metrics middleware) and the internal
stream route; this process calls it through ``InternalClient``, once with HTTP alone (``streams=0``) and once over
its streams, with 1 and with 8 calls out at a time. Each line is the CPU of the client (this process) and of the
server (read from /proc) per call, alternating between the transports in every round (docs/performance.md 25).
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import subprocess
import sys
import time
from collections.abc import Sequence

import uvloop

from bench.internal_call import TOKEN, Send, send
from bench.machine import cpu_seconds
from services.common.internal import InternalClient
from services.common.stream import STREAMS

REQUEST = Send(conversation_id="c1", sender_id="u1", client_msg_id="m1", text="hello there")
SERVER = """
import uvicorn
from bench.internal_call import TOKEN, served_by_contract
from services.common.internal import RequireInternal
from services.common.stream import StreamServer
app = served_by_contract()
app.router.routes.append(StreamServer(RequireInternal(TOKEN)).route())
uvicorn.run(app, host="127.0.0.1", port={port}, log_level="warning", loop="uvloop", http="httptools",
            ws="services.common.wsprotocol:BoundedCloseProtocol", ws_max_size=4 << 20, ws_ping_interval=None)
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _server_cpu_s(pid: int) -> float:
    seconds = cpu_seconds(pid)
    if seconds is None:
        raise SystemExit(f"the server (pid {pid}) is gone")
    return seconds


async def _calls(client: InternalClient, calls: int, at_once: int) -> None:
    async def one_after_another(count: int) -> None:
        for _ in range(count):
            await send.ask(client, REQUEST)

    await asyncio.gather(*(one_after_another(calls // at_once) for _ in range(at_once)))


async def _wait_up(url: str, deadline_s: float = 30.0) -> None:
    client = InternalClient(url, TOKEN, streams=0, timeout_s=2)
    give_up = time.monotonic() + deadline_s
    try:
        while True:
            try:
                await send.ask(client, REQUEST)
                return
            except Exception:
                if time.monotonic() > give_up:
                    raise
                await asyncio.sleep(0.2)
    finally:
        await client.close()


async def run(server: int, url: str, calls: int, repeat: int) -> None:
    """``calls`` calls per transport and number of calls out, ``repeat`` times, to ``url`` served by pid ``server``."""
    await _wait_up(url)
    clients = {"http": InternalClient(url, TOKEN, streams=0), "stream": InternalClient(url, TOKEN, streams=STREAMS)}
    try:
        for client in clients.values():
            await _calls(client, 500, 8)  # warm up, and open the streams
        print(f"{'transport':10s} {'calls out':>9s} {'client us/call':>15s} {'server us/call':>15s}")
        for _ in range(repeat):
            for at_once in (1, 8):
                for name, client in clients.items():
                    mine, theirs = time.process_time(), _server_cpu_s(server)
                    await _calls(client, calls, at_once)
                    mine, theirs = time.process_time() - mine, _server_cpu_s(server) - theirs
                    print(f"{name:10s} {at_once:9d} {1e6 * mine / calls:15.0f} {1e6 * theirs / calls:15.0f}")
    finally:
        for client in clients.values():
            await client.close()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.internal_stream", description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=4000, help="calls per transport and round (default 4000)")
    parser.add_argument("--repeat", type=int, default=2, help="rounds (default 2)")
    args = parser.parse_args(argv)
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-c", SERVER.format(port=port)])
    try:
        uvloop.run(run(server.pid, f"http://127.0.0.1:{port}", args.calls, args.repeat))
    finally:
        server.terminate()
        server.wait(30)


if __name__ == "__main__":
    main()
