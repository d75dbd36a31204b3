"""What every image build of Courier's shares: the Docker engine, the Debian base image, running commands, the cache.

No container registry is reachable from the machines Courier is built on, so every image is built here, starting
from a Debian root file system made with debootstrap from the same Debian mirror apt uses. Standard library only:
this runs before any virtualenv exists.

Layout (COURIER_CACHE_DIR, default ~/.cache/courier):
    images/base-<suite>-<key>.tar     the debootstrap root, re-imported when Docker's data is gone
    images/<name>-<tag>.tar           `docker save` of a built image, for `kind load image-archive`
    docker/courier-runc               the runc wrapper dockerd runs containers with on hosts that need it
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.machinery
import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]

SUITE = "bookworm"
# What every Courier image starts from; tools a build step needs are installed in that step, not here.
BASE_PACKAGES = ("ca-certificates", "tzdata")
# The machine's CA bundle: HTTPS to the package registries needs it inside a build. It goes into build stages only,
# at a path the ca-certificates package does not regenerate, and never into an image that is shipped.
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
BUILD_CA_NAME = "courier-build-ca.crt"

DOCKER_DIR = Path(os.environ.get("COURIER_DOCKER_DIR", "/tmp/courier-docker"))  # noqa: S108 - logs and pid
ENGINE_PID_FILE = Path("/var/run/docker.pid")  # dockerd's own, at its default place


class ImageError(Exception):
    """A step that cannot go on; the command line prints it and exits non-zero."""


def load_script(name: str, path: Path) -> ModuleType:
    """One of the repository's standalone scripts (infra/courier-infra, infra/kube/courier-kube) as a module named
    ``name``, registered in sys.modules first: its dataclasses look their module up there while being defined."""
    if name in sys.modules:
        return sys.modules[name]
    loader = importlib.machinery.SourceFileLoader(name, str(path))
    spec = importlib.util.spec_from_loader(name, loader)
    if spec is None:
        raise ImageError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    loader.exec_module(module)
    return module


def log(message: str) -> None:
    print(f"courier-images: {message}", file=sys.stderr, flush=True)


def cache_root() -> Path:
    return Path(os.environ.get("COURIER_CACHE_DIR", Path.home() / ".cache" / "courier")).absolute()


def images_dir() -> Path:
    path = cache_root() / "images"
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def file_lock(name: str) -> Iterator[None]:
    """Serialise concurrent builds of one thing (two test sessions must not build the same image at once)."""
    path = images_dir() / f".{name}.lock"
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def run(
    argv: list[str],
    *,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    stdin: str | None = None,
    timeout: float = 1800,
    log_file: Path | None = None,
) -> str:
    """Run a command and return its stdout; on failure raise with the tail of its output.

    With log_file, stdout and stderr stream into that file (a long build can be followed with tail -f)."""
    merged = {**os.environ, **(env or {})}
    try:
        if log_file is None:
            proc = subprocess.run(  # noqa: S603 - fixed argument lists, no shell
                argv, cwd=cwd, env=merged, input=stdin, capture_output=True, text=True, timeout=timeout, check=False
            )
            output, code = proc.stdout + proc.stderr, proc.returncode
            stdout = proc.stdout
        else:
            log_file.parent.mkdir(parents=True, exist_ok=True)
            with log_file.open("a") as handle:
                handle.write(f"$ {shlex.join(argv)}\n")
                handle.flush()
                start = handle.tell()
                code = subprocess.run(  # noqa: S603 - fixed argument lists, no shell
                    argv, cwd=cwd, env=merged, input=stdin, stdout=handle, stderr=subprocess.STDOUT, text=True,
                    timeout=timeout, check=False,
                ).returncode  # fmt: skip
            with log_file.open() as handle:
                handle.seek(start)
                stdout = output = handle.read()
    except subprocess.TimeoutExpired as exc:
        raise ImageError(f"{shlex.join(argv)} timed out after {timeout:.0f}s") from exc
    if code != 0:
        tail = "\n".join(output.strip().splitlines()[-40:])
        where = f" (log: {log_file})" if log_file else ""
        raise ImageError(f"{shlex.join(argv)} exited {code}{where}:\n{tail}")
    return stdout


def package_installed(package: str) -> bool:
    """Installed, not merely known: a removed package keeps its configuration (dpkg state ``rc``), and
    ``dpkg -s`` still answers 0 for it."""
    query = subprocess.run(  # noqa: S603 - fixed argument list
        ["/usr/bin/dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True
    )
    return query.returncode == 0 and query.stdout.strip() == "install ok installed"


def apt_install(*packages: str) -> None:
    """Install Debian packages that are missing (as root, as on every machine Courier is built on)."""
    missing = [p for p in packages if not package_installed(p)]
    if not missing:
        return
    if os.geteuid() != 0:
        raise ImageError(
            f"missing Debian packages {' '.join(missing)}; as root: apt-get install -y {' '.join(missing)}"
        )
    log(f"installing Debian packages: {' '.join(missing)}")
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    with no_service_autostart():
        try:
            run(["apt-get", "install", "-y", "--no-install-recommends", *missing], env=env, timeout=1800)
        except ImageError:
            run(["apt-get", "update"], env=env, timeout=900)
            run(["apt-get", "install", "-y", "--no-install-recommends", *missing], env=env, timeout=1800)


@contextlib.contextmanager
def no_service_autostart() -> Iterator[None]:
    """Keep apt from starting the packages' own daemons (policy-rc.d exit 101: action forbidden)."""
    policy = Path("/usr/sbin/policy-rc.d")
    if policy.exists():
        yield
        return
    policy.write_text("#!/bin/sh\n# written by courier-images for the duration of one apt-get install\nexit 101\n")
    policy.chmod(0o755)
    try:
        yield
    finally:
        policy.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------------- the engine


def docker_bin() -> str:
    """The Docker client of Debian's docker.io, which matches its daemon; any other `docker` on PATH after it."""
    for candidate in ("/usr/bin/docker", shutil.which("docker")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise ImageError("no docker client: `courier-images engine` installs Debian's docker.io")


def docker(*args: str, timeout: float = 1800, log_file: Path | None = None, stdin: str | None = None) -> str:
    return run([docker_bin(), *args], timeout=timeout, log_file=log_file, stdin=stdin)


def engine_running() -> bool:
    client = shutil.which("docker") or "/usr/bin/docker"
    if not os.access(client, os.X_OK):
        return False
    probe = subprocess.run(  # noqa: S603 - fixed argument list
        [client, "info", "--format", "{{.ServerVersion}}"], capture_output=True, timeout=60
    )
    return probe.returncode == 0


def missing_capabilities() -> list[str]:
    """The capabilities Docker grants a privileged container that this host's bounding set lacks (by bit)."""
    with open("/proc/self/status") as status:
        bounding = next(int(line.split()[1], 16) for line in status if line.startswith("CapBnd:"))
    last_cap = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    return [str(bit) for bit in range(last_cap + 1) if not bounding >> bit & 1]


def ensure_engine() -> None:
    """Docker's engine running: Debian's docker.io installed and dockerd started when no engine answers.

    On a host whose capability bounding set lacks some capability, dockerd's default runtime is courier-runc,
    which drops those from each container's spec, so that privileged containers (kind's nodes) can start.
    """
    if engine_running():
        return
    apt_install("docker.io", "iptables")
    if engine_running():  # the package's own service may have started it
        return
    DOCKER_DIR.mkdir(parents=True, exist_ok=True)
    clear_stale_pid_file(ENGINE_PID_FILE, "dockerd")
    argv = ["/usr/sbin/dockerd", "--host", "unix:///var/run/docker.sock", "--storage-driver", "overlay2"]
    if missing_capabilities():
        shim = cache_root() / "docker" / "courier-runc"
        shim.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(HERE / "courier-runc", shim)
        shim.chmod(0o755)
        argv += ["--add-runtime", f"courier-runc={shim}", "--default-runtime", "courier-runc"]
        log(f"this host lacks capabilities {','.join(missing_capabilities())}: dockerd runs containers via {shim}")
    out = (DOCKER_DIR / "dockerd.log").open("ab")
    log(f"starting dockerd (log: {DOCKER_DIR / 'dockerd.log'})")
    proc = subprocess.Popen(  # noqa: S603 - fixed argument list
        argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
    )
    (DOCKER_DIR / "dockerd.pid").write_text(f"{proc.pid}\n")
    deadline = time.monotonic() + 120
    while not engine_running():
        if proc.poll() is not None:
            tail = (DOCKER_DIR / "dockerd.log").read_text(errors="replace").splitlines()[-20:]
            raise ImageError("dockerd exited {}:\n{}".format(proc.returncode, "\n".join(tail)))
        if time.monotonic() > deadline:
            raise ImageError(f"dockerd did not answer within 120 s (log: {DOCKER_DIR / 'dockerd.log'})")
        time.sleep(1)


def clear_stale_pid_file(pid_file: Path, name: str) -> None:
    """Remove ``pid_file`` unless the process it names is a live ``name``. A daemon killed without its own cleanup
    leaves its pid file behind, and dockerd refuses to start while the pid it names is alive, whatever process has
    that pid by now (on a busy host, often another one)."""
    try:
        pid = int(pid_file.read_text().strip())
    except FileNotFoundError:
        return
    except ValueError:
        pid = 0
    try:
        running = Path(f"/proc/{pid}/comm").read_text().strip() if pid > 0 else ""
    except OSError:
        running = ""
    if running != name:
        log(f"removing {pid_file}: pid {pid} is {repr(running) if running else 'not running'}, not {name}")
        pid_file.unlink(missing_ok=True)


def stop_engine() -> None:
    """Stop the dockerd ensure_engine started (an engine started otherwise is left alone)."""
    pid_file = DOCKER_DIR / "dockerd.pid"
    if not pid_file.exists():
        return
    pid = int(pid_file.read_text())
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, 15)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            os.kill(pid, 0)
            time.sleep(0.5)
    pid_file.unlink(missing_ok=True)


def image_exists(ref: str) -> bool:
    probe = subprocess.run([docker_bin(), "image", "inspect", ref], capture_output=True, timeout=60)  # noqa: S603
    return probe.returncode == 0


# ---------------------------------------------------------------------------------------------------- the base


def debian_mirror() -> str:
    """The Debian mirror apt on this machine uses (the base image is built from the same one)."""
    sources = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for path in sources:
        if not path.is_file():
            continue
        text = path.read_text(errors="replace")
        for match in re.finditer(r"^URIs:\s*(\S+)", text, re.MULTILINE):
            if match.group(1).rstrip("/").endswith("/debian"):
                return match.group(1)
        for match in re.finditer(r"^deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+" + SUITE + r"\s", text, re.MULTILINE):
            if match.group(1).rstrip("/").endswith("/debian"):
                return match.group(1)
    raise ImageError("no Debian mirror found in apt's sources (/etc/apt/sources.list[.d])")


def base_ref() -> str:
    """courier-base:<suite>-<key>: the key changes with the package list."""
    key = hashlib.sha256(" ".join(BASE_PACKAGES).encode()).hexdigest()[:8]
    return f"courier-base:{SUITE}-{key}"


def ensure_base() -> str:
    """The Debian base image, imported from the cached root file system, made with debootstrap when missing."""
    ref = base_ref()
    with file_lock("base"):
        if image_exists(ref):
            return ref
        archive = images_dir() / f"{ref.replace(':', '-')}.tar"
        if not archive.exists():
            apt_install("debootstrap")
            with tempfile.TemporaryDirectory(prefix="courier-base-", dir=images_dir()) as tmp:
                root = Path(tmp) / "root"
                build_log = images_dir() / "base.log"
                log(f"debootstrap {SUITE} into {root} (log: {build_log})")
                run(
                    ["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", SUITE, str(root),
                     debian_mirror()],
                    timeout=1800, log_file=build_log,
                )  # fmt: skip
                # apt in the image uses the same mirror, over the same sources format as the host.
                (root / "etc/apt/sources.list").write_text(
                    f"deb {debian_mirror()} {SUITE} main\ndeb {debian_mirror()} {SUITE}-updates main\n"
                )
                # Images are small and rebuilt often: no apt caches, no docs, no recommends.
                (root / "etc/apt/apt.conf.d/90courier").write_text(
                    'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n'
                    'Acquire::Languages "none";\nDPkg::Post-Invoke {"rm -rf /var/cache/apt/archives/*.deb";};\n'
                )
                for leftover in ("var/cache/apt/archives", "var/lib/apt/lists"):
                    for path in (root / leftover).glob("*"):
                        if path.is_file():
                            path.unlink()
                partial = archive.with_suffix(".partial")
                run(["tar", "-C", str(root), "--numeric-owner", "-cf", str(partial), "."], timeout=900)
                os.replace(partial, archive)
        log(f"importing {archive.name} as {ref}")
        docker("import", "--change", 'CMD ["/bin/bash"]', str(archive), ref, timeout=900)
        return ref


@contextlib.contextmanager
def build_context(source: Path) -> Iterator[Path]:
    """A copy of `source` with the machine's CA bundle beside it, for builds whose steps fetch from registries."""
    with tempfile.TemporaryDirectory(prefix="courier-ctx-") as tmp:
        ctx = Path(tmp) / "ctx"
        shutil.copytree(source, ctx, symlinks=True)
        shutil.copy2(HOST_CA_BUNDLE, ctx / BUILD_CA_NAME)
        yield ctx


def build(
    ref: str, context: Path, *, dockerfile: Path | None = None, args: dict[str, str] | None = None, name: str = ""
) -> None:
    """docker build with the base image passed as BASE_IMAGE; output in images/<name>.log."""
    argv = ["build", "--tag", ref, "--build-arg", f"BASE_IMAGE={ensure_base()}"]
    for key, value in (args or {}).items():
        argv += ["--build-arg", f"{key}={value}"]
    if dockerfile is not None:
        argv += ["--file", str(dockerfile)]
    build_log = images_dir() / f"{name or ref.split(':')[0]}.log"
    log(f"docker build {ref} (log: {build_log})")
    env_prefix = {"DOCKER_BUILDKIT": "0"}  # the classic builder: Debian's engine ships no buildx
    run([docker_bin(), *argv, str(context)], env=env_prefix, timeout=3600, log_file=build_log)


def save(ref: str) -> Path:
    """`docker save` of an image into the cache (for `kind load image-archive`); reused while the id matches."""
    image_id = docker("image", "inspect", "--format", "{{.Id}}", ref).strip().split(":")[-1][:12]
    archive = images_dir() / f"{ref.replace('/', '_').replace(':', '-')}-{image_id}.tar"
    if not archive.exists():
        partial = archive.with_suffix(".partial")
        docker("save", "--output", str(partial), ref, timeout=1800)
        os.replace(partial, archive)
    return archive
