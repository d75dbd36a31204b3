"""The composition root of the operator process: flags and COURIER_OPERATOR_* settings -> API client,
reconciler, kopf registry -> ``kopf.run``. The Helm chart runs it as ``python -m im_operator --liveness=...``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import socket
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Sequence

import kopf
from aiohttp import web

from im_operator.config import OperatorConfig
from im_operator.election import LeaderElector, LeaseSettings
from im_operator.handlers import build_registry, kopf_settings
from im_operator.kube import Kube
from im_operator.metrics import serve as serve_metrics
from im_operator.reconcile import Reconciler
from im_operator.render import BACKEND_IMAGES


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m im_operator", description="Reconcile IMCluster resources into running Courier clusters."
    )
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument(
        "-n",
        "--namespace",
        action="append",
        default=[],
        help="watch this namespace (repeatable); default COURIER_OPERATOR_NAMESPACES, else every namespace",
    )
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="watch every namespace")
    parser.add_argument(
        "--liveness", default=None, help="serve kopf's liveness probe, e.g. http://0.0.0.0:8080/healthz"
    )
    parser.add_argument("--default-image", default=None, help="image for IMClusters without spec.image")
    parser.add_argument(
        "--backend-image",
        action="append",
        default=[],
        metavar="KEY=IMAGE",
        help="default image of a managed backend (redis, kafka, objectStore, mysql, mariadb, postgresql); repeatable",
    )
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument("--debug", "--verbose", action="store_true", help="log kopf's diagnostics too")
    verbosity.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    config = OperatorConfig()
    if args.namespace:
        config.namespaces = ",".join(args.namespace)
    elif args.all_namespaces:
        config.namespaces = ""
    if args.liveness is not None:
        config.liveness = args.liveness
    if args.default_image is not None:
        config.default_image = args.default_image
    for pair in args.backend_image:
        key, _, image = pair.partition("=")
        config.backend_images[key] = image
    unknown = sorted(set(config.backend_images) - set(BACKEND_IMAGES))
    if unknown:
        raise SystemExit(f"unknown backend image keys {unknown}; known: {sorted(BACKEND_IMAGES)}")
    kopf.configure(debug=args.debug, quiet=args.quiet, log_format=kopf.LogFormat.PLAIN)
    if not args.debug:
        # kopf reports every handled watch event at INFO ("Handler 'child-services' succeeded."): one line per
        # pod status change. The reconcile logs what it does itself; kopf's warnings and errors still show.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    logging.getLogger("im_operator").info("watching %s", ", ".join(config.namespace_list()) or "every namespace")
    kube = Kube.from_environment()
    elector = elector_of(kube, config) if config.leader_election else None
    reconciler = Reconciler(
        kube,
        default_image=config.default_image,
        backend_images=config.backend_images,
        rollout_deadline_s=config.rollout_deadline_s,
        leading=elector.still_leading if elector is not None else lambda: True,
    )
    settings = kopf.OperatorSettings()
    kopf_settings(settings)
    metrics_server = serve_metrics(config.metrics_port, config.metrics_host)
    try:
        with contextlib.suppress(asyncio.CancelledError):
            return asyncio.run(run(reconciler, elector, config, settings))
        return 0
    finally:
        metrics_server.shutdown()
        kube.close()


async def run(
    reconciler: Reconciler, elector: LeaderElector | None, config: OperatorConfig, settings: kopf.OperatorSettings
) -> int:
    """kopf, once this process leads (at once without leader election); 1 when the lead was lost."""
    if elector is not None:
        async with standby_liveness(config.liveness):
            await elector.acquire()
    namespaces = config.namespace_list()
    operator = asyncio.create_task(
        kopf.operator(
            registry=build_registry(reconciler, config),
            settings=settings,
            # Leader election is the Lease's (election.py), not kopf's peering: no peering objects, no RBAC for them.
            standalone=True,
            clusterwide=not namespaces,
            namespaces=namespaces,
            liveness_endpoint=config.liveness or None,
        ),
        name="kopf",
    )
    if elector is None:
        await operator
        return 0
    holding = asyncio.create_task(elector.hold(), name="lease")
    try:
        await asyncio.wait({operator, holding}, return_when=asyncio.FIRST_COMPLETED)
        if holding.done():
            # Lost the Lease: stop at once (no graceful wind-down: another process may lead any moment now).
            operator.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await operator
            return 1
        await operator  # stopped by a signal (or failed: its exception goes up)
        return 0
    finally:
        holding.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await holding
        await elector.release()


def elector_of(kube: Kube, config: OperatorConfig) -> LeaderElector:
    identity = os.environ.get("POD_NAME") or f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
    return LeaderElector(
        kube.with_own_thread(),
        LeaseSettings(
            name=config.lease_name,
            namespace=config.lease_namespace_or_default(),
            identity=identity,
            duration_s=config.lease_duration_s,
            renew_deadline_s=config.lease_renew_deadline_s,
            retry_period_s=config.lease_retry_period_s,
        ),
    )


@contextlib.asynccontextmanager
async def standby_liveness(endpoint: str) -> AsyncIterator[None]:
    """While standing by, answer the liveness endpoint kopf will serve once leading: a standby is healthy."""
    if not endpoint:
        yield
        return
    url = urllib.parse.urlsplit(endpoint)

    async def standing_by(_request: web.Request) -> web.Response:
        return web.json_response({"standby": True})

    app = web.Application()
    app.router.add_get(url.path or "/", standing_by)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, url.hostname, url.port).start()
    try:
        yield
    finally:
        await runner.cleanup()
