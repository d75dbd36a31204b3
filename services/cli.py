"""The ``courier`` command: ``courier dev`` runs every service in one process on embedded defaults."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

import uvicorn

WS_PROTOCOL = "services.common.wsprotocol:BoundedCloseProtocol"
"""uvicorn's WebSocket implementation, in every server Courier starts: websockets' Sans-I/O protocol (about 30%
less CPU per frame than uvicorn's legacy ``websockets`` one, 35% less than ``wsproto``: docs/performance.md 10),
with its close bounded in time as the legacy one had it."""


def _dev(args: argparse.Namespace) -> int:
    from services.allinone import create_app
    from services.common.logs import configure_logging
    from services.common.runtime import settle
    from services.common.settings import Settings

    overrides: dict[str, object] = {"mode": "dev"}
    if args.host:
        overrides["host"] = args.host
    if args.port:
        overrides["port"] = args.port
    if args.data_dir:
        overrides["data_dir"] = args.data_dir
    settings = Settings(**overrides)  # type: ignore[arg-type]
    log_config = configure_logging("all", args.log_level)
    app = create_app(settings)
    settle(settings.gc_young_threshold)
    print(f"courier dev: serving on http://{settings.host}:{settings.port} (data in {settings.data_dir}/)", flush=True)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=args.log_level,
        log_config=log_config,
        ws=WS_PROTOCOL,
        ws_max_size=4 << 20,
        ws_ping_interval=None,
        ws_per_message_deflate=False,  # compression costs ~100 KiB per socket; frames are small JSON
        timeout_graceful_shutdown=5,
        # uvicorn alone believes X-Forwarded-For from loopback: any local client could pick its address.
        proxy_headers=bool(settings.gateway.trusted_proxies),
        forwarded_allow_ips=settings.gateway.trusted_proxies,
    )
    return 0


def _run(args: argparse.Namespace) -> int:
    import uvloop

    from services.common.hardening import harden
    from services.common.logs import configure_logging
    from services.common.runtime import settle
    from services.common.settings import Settings
    from services.common.shutdown import DrainingServer
    from services.run import create_service_app, serve_gateway

    overrides: dict[str, object] = {}
    if args.port:
        overrides["port"] = args.port
    if args.node_name:
        overrides["node_name"] = args.node_name
    log_config = configure_logging(args.service, args.log_level)
    settings = harden(Settings(**overrides))  # type: ignore[arg-type]
    print(f"courier run {args.service}: http://{settings.host}:{settings.port}", flush=True)
    if args.service == "gateway":
        settle(settings.gc_young_threshold)
        # The event loop uvicorn picks for the other processes: the front copies every spliced byte, and uvloop
        # reads and writes a socket in C where asyncio's own loop runs Python for each (docs/performance.md 24).
        uvloop.run(serve_gateway(settings))
        return 0
    app = create_service_app(args.service, settings)
    settle(settings.gc_young_threshold)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=args.log_level,
        log_config=log_config,
        ws=WS_PROTOCOL,
        ws_max_size=4 << 20,
        ws_ping_interval=None,
        ws_per_message_deflate=False,  # compression costs ~100 KiB per socket; frames are small JSON
        timeout_graceful_shutdown=5,
        proxy_headers=bool(settings.gateway.trusted_proxies),
        forwarded_allow_ips=settings.gateway.trusted_proxies,
        backlog=4096,
    )
    DrainingServer(config, app.state.drain).run()
    return 0


def _migrate(args: argparse.Namespace) -> int:
    """Database schema to the newest revision, Kafka topics with their partition counts."""
    import asyncio

    from services.common.settings import Settings
    from services.migrate import migrate

    settings = Settings()

    async def run() -> None:
        await migrate(settings)
        print(f"database migrated: {settings.sqlalchemy_url.split('@')[-1]}", flush=True)
        if settings.kafka.bootstrap:
            from services.message.adapters.kafka import ensure_topics

            await ensure_topics(settings.kafka)
            print(f"kafka topics ready on {settings.kafka.bootstrap}", flush=True)

    asyncio.run(run())
    return 0


def _dlq(args: argparse.Namespace) -> int:
    """``courier dlq list`` shows dead letters with their failure reason; ``replay`` sends them back."""
    import asyncio

    import orjson

    from services.common.settings import Settings
    from services.message.dlq import list_dlq, replay_dlq

    settings = Settings()
    if not settings.kafka.bootstrap:
        print("courier dlq needs COURIER_KAFKA__BOOTSTRAP (the embedded mode keeps its DLQ in process)")
        return 2
    if args.action == "list":
        for entry in asyncio.run(list_dlq(settings.kafka, limit=args.limit)):
            print(orjson.dumps(entry).decode())
        return 0
    count = asyncio.run(replay_dlq(settings.kafka, limit=args.limit))
    print(f"replayed {count} dead letters")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args_in = list(sys.argv[1:] if argv is None else argv)
    if args_in[:1] == ["bench"]:  # the load tool has its own flags: hand it the rest as is
        from bench.cli import main as bench_main

        return bench_main(args_in[1:])
    parser = argparse.ArgumentParser(prog="courier", description="Courier instant-messaging backend.")
    commands = parser.add_subparsers(dest="command", required=True)

    dev = commands.add_parser("dev", help="all services in one process on embedded defaults (SQLite, in-process)")
    dev.add_argument("--host", default=os.environ.get("COURIER_HOST"), help="bind address (default 127.0.0.1)")
    dev.add_argument("--port", type=int, default=None, help="port (default 8080)")
    dev.add_argument("--data-dir", default=None, help="where data is kept (default ./.courier)")
    dev.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    dev.set_defaults(handler=_dev)

    from services.run import SERVICES

    run = commands.add_parser("run", help="one service per process on real backends (settings from COURIER_*)")
    run.add_argument("service", choices=SERVICES)
    run.add_argument("--port", type=int, default=None, help="port (default COURIER_PORT or 8080)")
    run.add_argument("--node-name", default=None, help="delivery: this node's name on the ring")
    run.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    run.set_defaults(handler=_run)

    migrate = commands.add_parser("migrate", help="upgrade the database schema and create the Kafka topics")
    migrate.set_defaults(handler=_migrate)

    dlq = commands.add_parser("dlq", help="inspect or replay the dead-letter topic")
    dlq.add_argument("action", choices=["list", "replay"])
    dlq.add_argument("--limit", type=int, default=100, help="at most this many records")
    dlq.set_defaults(handler=_dlq)

    commands.add_parser("bench", help="the load tool: connections, throughput, fanout, sync (see bench/README.md)")
    args = parser.parse_args(args_in)
    # dev and run switch to JSON lines (services.common.logs) once they know their service name.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    handler = args.handler
    return int(handler(args))


if __name__ == "__main__":
    sys.exit(main())
