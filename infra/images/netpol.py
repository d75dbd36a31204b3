"""The kind cluster's NetworkPolicy enforcer: kube-network-policies, built from the Go module proxy, in our own image.

The node's bridge CNI enforces no NetworkPolicy, so the e2e tier installs this DaemonSet (netpol/enforcer.yaml) into
the kube-system namespace of its cluster when it tests the operator's policies on real pods. kube-network-policies
(SIG Network's NetworkPolicy implementation) judges the first packet of each connection in user space; its own
nftables rules need nftables' `queue`, which the kernels Courier is built on lack, so `netpol/enforce` sends the
packets with iptables' NFQUEUE target instead (infra/README.md says why this tool and not another).

ensure_image() returns courier-netpol:<version>-<key>; manifest(image) the objects to apply. Cache
(COURIER_CACHE_DIR, default ~/.cache/courier): kube-network-policies-<version>/kube-network-policies and built.json
(what was built, in how many seconds). Standard library only.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import imagelib
import node

VERSION = "v0.8.0"
MODULE = "sigs.k8s.io/kube-network-policies"
NETPOL_DIR = imagelib.HERE / "netpol"
REPOSITORY = "courier-netpol"
# The NFQUEUE number the iptables rules feed and the program reads.
QUEUE = 100
NAMESPACE = "kube-system"
DAEMONSET = "courier-netpol"


def ensure_binary() -> Path:
    """kube-network-policies VERSION (its cmd package), built with `go install` when missing; returns its path."""
    return node.ensure_go_program(MODULE, f"{MODULE}/cmd", VERSION, "kube-network-policies")


def image_ref(base: str) -> str:
    """courier-netpol:<version>-<key>: the key covers netpol/, this file and the base image."""
    return f"{REPOSITORY}:{VERSION}-{node.image_key(VERSION, NETPOL_DIR, __file__, base)}"


def ensure_image() -> str:
    """The enforcer's image, built when missing; returns its ref."""
    imagelib.ensure_engine()
    ref = image_ref(imagelib.ensure_base())
    with imagelib.file_lock("netpol"):
        if imagelib.image_exists(ref):
            return ref
        binary = ensure_binary()
        with tempfile.TemporaryDirectory(prefix="courier-netpol-ctx-") as tmp:
            ctx = Path(tmp)
            for name in ("Dockerfile", "enforce"):
                (ctx / name).write_bytes((NETPOL_DIR / name).read_bytes())
                (ctx / name).chmod((NETPOL_DIR / name).stat().st_mode)
            (ctx / "kube-network-policies").write_bytes(binary.read_bytes())
            (ctx / "kube-network-policies").chmod(0o755)
            imagelib.build(ref, ctx, name="netpol")
    return ref


def manifest(image: str) -> str:
    """The ServiceAccount, RBAC and DaemonSet of the enforcer, for the node image's pod network."""
    text = (NETPOL_DIR / "enforcer.yaml").read_text()
    for placeholder, value in {"@IMAGE@": image, "@POD_SUBNET@": node.POD_SUBNET, "@QUEUE@": str(QUEUE)}.items():
        text = text.replace(placeholder, value)
    return text
