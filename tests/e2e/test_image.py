"""The one Courier image, as built from this checkout for the kind cluster: non-root, `courier` as its entrypoint, the
operator importable, and nothing of the build left in it (no build CA, no pip, no uv, no compiler)."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

from tests.e2e.conftest import KindCluster, run


def in_image(image: str, *argv: str, entrypoint: str = "") -> subprocess.CompletedProcess[str]:
    command = ["docker", "run", "--rm", *(["--entrypoint", entrypoint] if entrypoint else []), image, *argv]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)


def test_runs_as_a_non_root_user_with_courier_as_its_entrypoint(kind_cluster: KindCluster) -> None:
    assert (
        run(["docker", "image", "inspect", "--format", "{{.Config.User}}", kind_cluster.image]).strip() == "10001:10001"
    )
    assert in_image(kind_cluster.image, "-u", entrypoint="id").stdout.strip() == "10001"
    usage = in_image(kind_cluster.image, "--help")
    assert usage.returncode == 0 and "{dev,run,migrate" in usage.stdout, usage.stdout + usage.stderr


def test_the_operator_is_importable_from_the_same_image(kind_cluster: KindCluster) -> None:
    proc = in_image(kind_cluster.image, "-m", "im_operator", "--help", entrypoint="python")
    assert proc.returncode == 0 and "--default-image" in proc.stdout, proc.stdout + proc.stderr


def test_nothing_of_the_build_is_left_in_the_image(kind_cluster: KindCluster) -> None:
    leftovers = in_image(
        kind_cluster.image, "-c",
        "ls -d /opt/courier-build /src 2>/dev/null; command -v pip pip3 uv gcc cc; "
        "python3.11 -m pip --version 2>/dev/null; true",
        entrypoint="sh",
    )  # fmt: skip
    assert leftovers.stdout.strip() == "", leftovers.stdout


def test_the_build_machines_ca_bundle_is_not_shipped(kind_cluster: KindCluster) -> None:
    """The build stage trusts this machine's CA bundle to reach the package registries; the image must not."""
    bundle = Path("/etc/ssl/certs/ca-certificates.crt").read_bytes()
    same_size = in_image(
        kind_cluster.image, "-c", f"find / -xdev -type f -size {len(bundle)}c -exec sha256sum {{}} + 2>/dev/null; true",
        entrypoint="sh",
    ).stdout  # fmt: skip
    assert hashlib.sha256(bundle).hexdigest() not in same_size, same_size
