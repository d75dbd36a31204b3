"""The kind cluster's metrics pipeline: what the operator's HorizontalPodAutoscalers read, in our own image.

The e2e tier's cluster serves no metrics API, so an HPA there can only report that it has no metric. When the tier
tests the operator's autoscalers on real pods, it installs this pipeline into the courier-metrics namespace
(metrics/pipeline.yaml) and removes it afterwards:
  - metrics-server, for the resource metrics API (metrics.k8s.io): the pods' CPU, which the gateway's HPA reads;
  - Prometheus, scraping every delivery pod's /metrics each 5 s with `namespace` and `pod` labels;
  - prometheus-adapter, for the custom metrics API (custom.metrics.k8s.io): it answers the delivery HPA's
    courier_ws_connections with the rule operator/README.md shows ("Autoscaling"), metrics/adapter.yaml here. It
    runs in Prometheus's pod and asks it on 127.0.0.1 (pipeline.yaml says why).
metrics-server and prometheus-adapter are built from the Go module proxy. Prometheus is the binary of Debian's
package that infra/courier-prometheus fetches for the dashboard tests. Debian builds it without Kubernetes service
discovery (kubernetes_sd_configs is not there), so it finds the pods through HTTP service discovery from
metrics/pod-targets, a program of ours (standard library Go) that lists the pods through the API server.

ensure_image() returns courier-metrics:<key>, one image holding the four programs; manifest(image) the objects to
apply, and api_services() the APIServices to apply once those serve. Cache (COURIER_CACHE_DIR, default
~/.cache/courier): metrics-server-<version>/metrics-server and prometheus-adapter-<version>/adapter, each with a
built.json (what was built, in how many seconds). Standard library only.
"""

from __future__ import annotations

import concurrent.futures
import json
import shutil
import sys
import tempfile
from pathlib import Path

import imagelib
import node
from imagelib import run

METRICS_DIR = imagelib.HERE / "metrics"
PROMETHEUS_SCRIPT = imagelib.REPO / "infra" / "courier-prometheus"
REPOSITORY = "courier-metrics"
NAMESPACE = "courier-metrics"
DEPLOYMENTS = ("metrics-server", "prometheus")
# Each Go program: (module, main package, version, binary).
METRICS_SERVER = ("sigs.k8s.io/metrics-server", "sigs.k8s.io/metrics-server/cmd/metrics-server", "v0.8.0",
                  "metrics-server")  # fmt: skip
ADAPTER = ("sigs.k8s.io/prometheus-adapter", "sigs.k8s.io/prometheus-adapter/cmd/adapter", "v0.12.0", "adapter")


def prometheus() -> Path:
    """Debian's Prometheus server, fetched by infra/courier-prometheus into its cache when missing."""
    return Path(run([sys.executable, str(PROMETHEUS_SCRIPT), "install"], timeout=900).strip()) / "prometheus"


def build_pod_targets(into: Path) -> None:
    """metrics/pod-targets (standard library only, a few seconds to build), built into `into`."""
    env = {"CGO_ENABLED": "0", "GOFLAGS": "-buildvcs=false", "GOWORK": "off"}
    argv = [node.go_tool(), "build", "-trimpath", "-ldflags=-s -w", "-o", str(into / "pod-targets"), "."]
    run(argv, cwd=METRICS_DIR / "pod-targets", env=env, timeout=900, log_file=imagelib.images_dir() / "metrics.log")


def image_ref(base: str, server: Path) -> str:
    """courier-metrics:<key>: the key covers the Go programs' versions, Prometheus's (its cache directory is named
    after the Debian version), metrics/, this file and the base image."""
    return f"{REPOSITORY}:{node.image_key([METRICS_SERVER, ADAPTER, server.parent.name], METRICS_DIR, __file__, base)}"


def ensure_image() -> str:
    """The pipeline's image, built when missing; returns its ref. The two Go programs build side by side."""
    imagelib.ensure_engine()
    server = prometheus()
    ref = image_ref(imagelib.ensure_base(), server)
    with imagelib.file_lock("metrics"):
        if imagelib.image_exists(ref):
            return ref
        with concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="metrics-go") as pool:
            built = list(pool.map(lambda program: node.ensure_go_program(*program), (METRICS_SERVER, ADAPTER)))
        with tempfile.TemporaryDirectory(prefix="courier-metrics-ctx-") as tmp:
            ctx = Path(tmp)
            shutil.copy2(METRICS_DIR / "Dockerfile", ctx / "Dockerfile")
            for binary in (*built, server):
                shutil.copy2(binary, ctx / binary.name)
            build_pod_targets(ctx)
            imagelib.build(ref, ctx, name="metrics")
    return ref


def manifest(image: str) -> str:
    """Every object of the pipeline, its configuration (Prometheus's, the adapter's rule) in one ConfigMap."""
    config = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "courier-metrics", "namespace": NAMESPACE},
        "data": {name: (METRICS_DIR / name).read_text() for name in ("prometheus.yml", "adapter.yaml")},
    }
    text = (METRICS_DIR / "pipeline.yaml").read_text().replace("@IMAGE@", image)
    # JSON is YAML: the ConfigMap goes in as one more document of the stream.
    return f"{text}---\n{json.dumps(config)}\n"


def api_services() -> str:
    """The APIServices of metrics.k8s.io (metrics-server) and custom.metrics.k8s.io (prometheus-adapter)."""
    return (METRICS_DIR / "apiservices.yaml").read_text()
