"""The images of the backends Courier's operator manages, built on this machine: no container registry is needed.

The operator (operator/im_operator/render.py, `_managed_backend`) runs each backend as a one-replica StatefulSet
under a fixed non-root uid, with every capability dropped, on a volume it may write only through fsGroup. These
images are built to exactly that contract, from Debian bookworm's packages and the Kafka jars and MinIO binary that
infra/courier-infra fetches (Maven Central, the Go module proxy):

    key (render.py)   image                               server                                           uid
    redis             courier-redis:<7.0.x>-<hash>        Debian's redis-server                            999
    kafka             courier-kafka:4.4.0-<hash>          Kafka's jars on Debian's OpenJDK 17, KRaft       1000
    objectStore       courier-minio:<version>-<hash>      MinIO, built from the Go module proxy            1000
    mariadb, mysql    courier-mariadb:<10.11.x>-<hash>    Debian's mariadb-server-core                     999
    postgresql        courier-postgresql:<15.x>-<hash>    Debian's postgresql-15                           999

<hash> covers everything an image is built from (its directory under backends/, the shared install script, the
base image, the pinned Kafka and MinIO versions, the security archive), so a change to any of them builds a new
image; the version is the one of the server installed, read from the built image, so the references are known once
ensure_backend_images has run (it returns them, and fills BACKEND_IMAGES; with the images built that takes a second).
Packages come with the fixes of <suite>-security when this machine's apt knows that archive (the base image does not
list it). `infra/images/check-backends` runs each image the way the operator's pod spec does and proves a client can
use it. Standard library only.
"""

from __future__ import annotations

import concurrent.futures
import functools
import hashlib
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import imagelib

BACKENDS_DIR = imagelib.HERE / "backends"
# Files every image's build context gets beside its own directory.
SHARED_FILES = (BACKENDS_DIR / "common" / "install-packages",)
COURIER_INFRA = imagelib.REPO / "infra" / "courier-infra"
# A build is mostly downloading and unpacking packages and committing layers, little compiling: three at once keep
# two cores busy without starving each other.
BUILD_WORKERS = 3

# The operator's backend keys (BACKEND_IMAGES and BACKEND_UIDS in render.py) -> the image that serves each.
OPERATOR_KEYS = {
    "redis": "redis",
    "kafka": "kafka",
    "objectStore": "minio",
    "mariadb": "mariadb",
    "mysql": "mariadb",
    "postgresql": "postgresql",
}
# Names courier-images also accepts for a key.
ALIASES = {"minio": "objectStore", "postgres": "postgresql"}

# Key -> local image reference, for render(backend_images=...); filled in by ensure_backend_images, as the tags
# carry the installed server's version, known once an image is built (the images are cached, so that is quick).
BACKEND_IMAGES: dict[str, str] = {}


@functools.cache
def courier_infra() -> ModuleType:
    """infra/courier-infra as a module: it knows which Kafka and MinIO to fetch, and how; this module reuses it."""
    return load_courier_infra("courier_infra")


def load_courier_infra(name: str) -> ModuleType:
    """A new instance of infra/courier-infra's module, registered as `name` (its dataclasses look themselves up)."""
    return imagelib.load_script(name, COURIER_INFRA)


@dataclass(frozen=True)
class BackendImage:
    """One image: backends/<name>/ holds its Dockerfile and scripts; it is tagged courier-<name>:<version>-<hash>."""

    name: str
    # The built image's reference -> the version of the server in it, for the tag.
    version: Callable[[str], str]
    # What the build context gets besides the image's directory ({name in the context: file or directory}), obtained
    # (downloaded, built) on demand; and a description of it that changes whenever it would.
    artifacts: Callable[[], dict[str, Path]] = field(default=dict)
    pinned: Callable[[], str] = field(default=str)

    @property
    def repository(self) -> str:
        return f"courier-{self.name}"

    @property
    def directory(self) -> Path:
        return BACKENDS_DIR / self.name


def reported_version(argv: list[str], pattern: str) -> Callable[[str], str]:
    """The version a program in the image prints (`redis-server --version`), the first group of `pattern`."""

    def version(ref: str) -> str:
        out = imagelib.docker("run", "--rm", "--network", "none", "--entrypoint", argv[0], ref, *argv[1:], timeout=120)
        match = re.search(pattern, out)
        if not match:
            raise imagelib.ImageError(f"{ref}: no version in the output of {' '.join(argv)}: {out.strip()[:200]!r}")
        return match.group(1)

    return version


def obtain(install: str) -> ModuleType:
    """Run courier-infra's install_kafka or install_minio (a no-op once cached); returns the module."""
    infra = courier_infra()
    try:
        # `courier-infra up` fetches into the same cache; its lock keeps the two from building the same thing at once.
        with infra.infra_lock():
            getattr(infra, install)(infra.Timings())
    except infra.InfraError as exc:
        raise imagelib.ImageError(f"courier-infra {install}: {exc}") from exc
    return infra


def kafka_artifacts() -> dict[str, Path]:
    return {"libs": obtain("install_kafka").kafka_home() / "libs"}


def kafka_pinned() -> str:
    infra = courier_infra()
    return f"kafka {infra.KAFKA_VERSION} scala {infra.KAFKA_SCALA} slf4j {infra.SLF4J_VERSION}"


def kafka_version(_ref: str) -> str:
    return str(courier_infra().KAFKA_VERSION)


def minio_artifacts() -> dict[str, Path]:
    return {"minio": obtain("install_minio").minio_binary()}


def minio_pinned() -> str:
    return f"{courier_infra().MINIO_MODULE}@{courier_infra().MINIO_VERSION}"


def minio_version(_ref: str) -> str:
    """The Go module's pseudo-version without its "v" (a tag cannot start with it and stay readable)."""
    return str(courier_infra().MINIO_VERSION).removeprefix("v")


# Slowest build first: with three at a time, the two-stage PostgreSQL build and the JRE do not end up last.
IMAGES = {
    image.name: image
    for image in (
        BackendImage("postgresql", reported_version(["postgres", "--version"], r"\(PostgreSQL\) (\d+(?:\.\d+)*)")),
        BackendImage("kafka", kafka_version, artifacts=kafka_artifacts, pinned=kafka_pinned),
        BackendImage("mariadb", reported_version(["mariadbd", "--version"], r"\bVer (\d+(?:\.\d+)+)")),
        BackendImage("redis", reported_version(["redis-server", "--version"], r"\bv=(\d+(?:\.\d+)+)")),
        BackendImage("minio", minio_version, artifacts=minio_artifacts, pinned=minio_pinned),
    )
}


@functools.cache
def build_args() -> dict[str, str]:
    """What every backend's Dockerfile takes besides BASE_IMAGE."""
    return {"DEBIAN_SECURITY_MIRROR": debian_security_mirror()}


def debian_security_mirror() -> str:
    """The Debian security archive this machine's apt uses, "" when it has none.

    imagelib's base image lists <suite> and <suite>-updates only; servers reachable over the network should carry
    the security fixes too, so the images fetch them from where this machine does (apt's policy names every source
    with its suite)."""
    try:
        policy = imagelib.run(["apt-cache", "policy"], timeout=120)
    except (imagelib.ImageError, OSError):
        policy = ""
    match = re.search(rf"^\s*\d+\s+(\S+)\s+{imagelib.SUITE}-security/main\s", policy, re.MULTILINE)
    if not match:
        imagelib.log(f"no {imagelib.SUITE}-security source in this machine's apt: the images get no security fixes")
        return ""
    return match.group(1)


def image_hash(image: BackendImage) -> str:
    """A short hash of everything the image is built from (file contents and whether they are executable)."""
    digest = hashlib.sha256()
    digest.update(f"base {imagelib.base_ref()}\nargs {sorted(build_args().items())}\n".encode())
    digest.update(f"artifacts {image.pinned()}\n".encode())
    files = sorted(path for path in image.directory.rglob("*") if path.is_file())
    for path in [*files, *SHARED_FILES]:
        executable = os.access(path, os.X_OK)
        digest.update(f"{path.relative_to(BACKENDS_DIR)} {executable} {path.stat().st_size}\n".encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:10]


def built_ref(image: BackendImage, key: str) -> str | None:
    """The image already built from these files, if any: courier-<name>:<any version>-<key>."""
    out = imagelib.docker(
        "image", "ls", "--filter", f"reference={image.repository}:*-{key}", "--format", "{{.Repository}}:{{.Tag}}"
    )
    refs = sorted(line for line in out.split() if line.endswith(f"-{key}"))
    return refs[0] if refs else None


def _link_or_copy(source: str, target: str) -> None:
    """Hard links make a context of the 140 MB MinIO binary or the Kafka jars free; a copy where they cannot."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def assemble_context(image: BackendImage, workdir: Path) -> Path:
    context = workdir / "context"
    shutil.copytree(image.directory, context)
    for shared in SHARED_FILES:
        shutil.copy2(shared, context / shared.name)
    for name, source in image.artifacts().items():
        if source.is_dir():
            shutil.copytree(source, context / name, copy_function=_link_or_copy)
        else:
            _link_or_copy(str(source), str(context / name))
    return context


def ensure_image(image: BackendImage) -> str:
    """The image's reference, built first unless an image of the same files exists."""
    key = image_hash(image)
    with imagelib.file_lock(f"backend-{image.name}"):
        existing = built_ref(image, key)
        if existing:
            return existing
        start = time.monotonic()
        # Tagged by its hash alone until the version is read from it; that tag does not end in -<key>, so an
        # interrupted build is never taken for a finished one.
        provisional = f"{image.repository}:{key}-unversioned"
        with tempfile.TemporaryDirectory(prefix=f"{image.repository}-", dir=imagelib.images_dir()) as tmp:
            imagelib.build(provisional, assemble_context(image, Path(tmp)), args=build_args(), name=image.repository)
        version = re.sub(r"[^A-Za-z0-9_.-]", "_", image.version(provisional))
        ref = f"{image.repository}:{version}-{key}"
        imagelib.docker("tag", provisional, ref)
        imagelib.docker("rmi", provisional)  # only the provisional tag goes; the image stays as `ref`
        imagelib.log(f"built {ref} in {time.monotonic() - start:.0f}s")
        return ref


def operator_keys(names: list[str] | None) -> list[str]:
    """The operator keys named (image names and aliases accepted: minio, postgres); all of them for None."""
    if not names:
        return list(OPERATOR_KEYS)
    keys = [ALIASES.get(name, name) for name in names]
    unknown = [name for name, key in zip(names, keys, strict=True) if key not in OPERATOR_KEYS]
    if unknown:
        raise imagelib.ImageError(
            f"unknown backend(s) {', '.join(unknown)}; choose from {', '.join([*OPERATOR_KEYS, *ALIASES])}"
        )
    return list(dict.fromkeys(keys))


def ensure_backend_images(names: list[str] | None = None) -> dict[str, str]:
    """Build whichever of the named backends' images (operator keys; all by default) are missing, several at once.

    Returns {operator key: image reference} (mysql and mariadb share an image) and records it in BACKEND_IMAGES.
    """
    keys = operator_keys(names)
    imagelib.ensure_engine()
    imagelib.ensure_base()  # once, before the builds that all start from it
    build_args()  # likewise: one look at apt's sources, one warning if they lack security updates
    wanted = [name for name in IMAGES if name in {OPERATOR_KEYS[key] for key in keys}]
    refs: dict[str, str] = {}
    errors: list[str] = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(BUILD_WORKERS, len(wanted))) as pool:
        futures = {pool.submit(ensure_image, IMAGES[name]): name for name in wanted}
        for future in concurrent.futures.as_completed(futures):
            try:
                refs[futures[future]] = future.result()
            except imagelib.ImageError as exc:
                errors.append(f"{futures[future]}: {exc}")
    if errors:
        raise imagelib.ImageError("backend images failed:\n" + "\n".join(errors))
    result = {key: refs[OPERATOR_KEYS[key]] for key in keys}
    BACKEND_IMAGES.update(result)
    return result
