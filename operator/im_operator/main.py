"""The composition root of the operator process: flags and COURIER_OPERATOR_* settings -> API client,
reconciler, kopf registry -> ``kopf.run``. The Helm chart runs it as ``python -m im_operator --liveness=...``."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

import kopf

from im_operator.config import OperatorConfig
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
    reconciler = Reconciler(kube, default_image=config.default_image, backend_images=config.backend_images)
    settings = kopf.OperatorSettings()
    kopf_settings(settings)
    namespaces = config.namespace_list()
    metrics_server = serve_metrics(config.metrics_port, config.metrics_host)
    try:
        kopf.run(
            registry=build_registry(reconciler, config),
            settings=settings,
            # One operator Deployment with the Recreate strategy: no peering objects (and no RBAC for them).
            standalone=True,
            clusterwide=not namespaces,
            namespaces=namespaces,
            liveness_endpoint=config.liveness or None,
        )
    finally:
        metrics_server.shutdown()
        kube.close()
    return 0
