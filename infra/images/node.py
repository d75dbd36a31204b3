"""The kind node image and the kind binary, made on this machine: no container registry is asked for anything.

ensure_node_image() returns courier-kind-node:<kubernetes version>-<key>, a node image for a single-node kind cluster:
  - the Courier base image (Debian bookworm) with systemd as init, Debian's containerd 1.6 and runc 1.1 serving the
    CRI with the systemd cgroup driver (as kind configures kubelet), Debian's CNI plugins and a bridge config for the
    pod subnet baked in (node/rootfs);
  - kubelet, kubeadm, kubectl and crictl at the paths kind uses;
  - in its containerd (namespace k8s.io, imported without unpacking), every image `kubeadm config images list`
    names for kind_config()'s image repository (kube-apiserver, kube-controller-manager, kube-scheduler, kube-proxy,
    etcd, coredns, pause), local-path-provisioner's, and the Courier base image, which local-path's helper pods run.
Every binary is built from the Go module proxy: the control plane and etcd by infra/kube/courier-kube (shared with
its loopback cluster), the rest here with its helpers; CoreDNS with only the plugins a kubeadm cluster uses, and the
pause program is our own (node/cmd). The images are single-binary images made with `docker import`, except
kube-proxy's, which needs iptables.

ensure_kind() returns the kind binary; kind_config() the cluster config that works with both on this machine.

Cache (COURIER_CACHE_DIR, default ~/.cache/courier): kind-node-<version>/bin (binaries), kind-node-<version>/built.json
(what was built, from what, in how many seconds), kind-<version>/kind. Standard library only.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import imagelib
from imagelib import ImageError, docker, log, run

NODE_DIR = imagelib.HERE / "node"
KUBE_SCRIPT = imagelib.REPO / "infra" / "kube" / "courier-kube"


# infra/kube/courier-kube: its Go build helpers, its versions, the control plane it builds.
kube = imagelib.load_script("courier_kube", KUBE_SCRIPT)

KUBE_VERSION: str = kube.KUBE_VERSION
ETCD_VERSION: str = kube.ETCD_VERSION
KIND_VERSION = "v0.33.0"
CRI_TOOLS_VERSION = "v1.37.0"
LOCAL_PATH_VERSION = "v0.0.30"
COREDNS_VERSION = "v1.13.1"  # kubeadm v1.35's CoreDNSVersion; checked against its image list at build time

# kubeadm's imageRepository (set by kind_config): a name that resolves nowhere, so an image missing from the node
# fails at once instead of being pulled from somewhere.
IMAGE_REPOSITORY = "courier.invalid/k8s"
POD_SUBNET = "10.244.0.0/16"
# The bridge's address range: the first /24 of POD_SUBNET, the podCIDR kube-controller-manager gives the first (only)
# node, so pod IPs and the node's podCIDR agree.
NODE_POD_CIDR = "10.244.0.0/24"
SERVICE_SUBNET = "10.96.0.0/16"
NODE_PORT = 30080
NODE_REPOSITORY = "courier-kind-node"

# Binaries that go into the node itself; the rest go into the images preloaded in its containerd.
NODE_BINARIES = ("kubelet", "kubeadm", "kubectl", "crictl")
TEMPLATE_FILES = ("rootfs/etc/containerd/config.toml", "rootfs/etc/cni/net.d/10-courier-bridge.conflist",
                  "rootfs/kind/manifests/default-storage.yaml")  # fmt: skip


def versions() -> dict[str, str]:
    return {
        "kubernetes": KUBE_VERSION,
        "etcd": ETCD_VERSION,
        "coredns": COREDNS_VERSION,
        "cri-tools": CRI_TOOLS_VERSION,
        "local-path-provisioner": LOCAL_PATH_VERSION,
        "image-repository": IMAGE_REPOSITORY,
        "pod-cidr": NODE_POD_CIDR,
    }


def cache_dir() -> Path:
    return imagelib.cache_root() / f"kind-node-{KUBE_VERSION}"


def go_tool() -> str:
    found = shutil.which("go")
    if found is None:
        raise ImageError("the Go toolchain is missing (`go` not on PATH); it builds kind and the node's binaries")
    return found


# ---------------------------------------------------------------------------------------------------- binaries


@dataclass(frozen=True)
class Step:
    """One Go build: what it is built from (key), the files it leaves in bin/, and how."""

    name: str
    key: str
    outputs: tuple[str, ...]
    build: Callable[[Path], None]


def build_kubernetes(out: Path) -> None:
    # The same throw-away module and replaces as courier-kube's control plane, so that Go's build cache shares every
    # package the two have in common (most of them).
    replaces, ldflags = kube.kubernetes_module()
    packages = [f"k8s.io/kubernetes/cmd/{name}" for name in ("kubelet", "kubeadm", "kubectl", "kube-proxy")]
    kube.go_build("node", {"k8s.io/kubernetes": KUBE_VERSION}, replaces, packages, out, None, ldflags)


def build_crictl(out: Path) -> None:
    stamp = f"-X=sigs.k8s.io/cri-tools/pkg/version.Version={CRI_TOOLS_VERSION}"
    module = "sigs.k8s.io/cri-tools"
    kube.go_build("crictl", {module: CRI_TOOLS_VERSION}, {}, [f"{module}/cmd/crictl"], out, None, (stamp,))


def build_local_path_provisioner(out: Path) -> None:
    module = "github.com/rancher/local-path-provisioner"
    kube.go_build("local-path-provisioner", {module: LOCAL_PATH_VERSION}, {}, [module], out)


def build_own_programs(out: Path) -> None:
    """node/cmd (pause, our CoreDNS): main packages of our own, in a module made up for the build."""
    go = go_tool()
    with tempfile.TemporaryDirectory(prefix="courier-node-cmd-") as tmp:
        work = Path(tmp)
        shutil.copytree(NODE_DIR / "cmd", work / "cmd")
        (work / "gotmp").mkdir()
        env = kube.go_env(work / "gotmp")
        (work / "go.mod").write_text(
            f"module courier.invalid/node\n\ngo 1.25.0\n\nrequire github.com/coredns/coredns {COREDNS_VERSION}\n"
        )
        build_log = imagelib.images_dir() / "kind-node-cmd.log"
        run([go, "mod", "tidy"], cwd=work, env=env, timeout=1800, log_file=build_log)
        staging = work / "out"
        argv = [go, "build", "-trimpath", "-ldflags=-s -w", "-o", f"{staging}/", "./cmd/pause", "./cmd/coredns"]
        run(argv, cwd=work, env=env, timeout=3600, log_file=build_log)
        for built in staging.iterdir():
            os.replace(built, out / built.name)


def sources_digest(directory: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(directory)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def steps() -> tuple[tuple[Step, ...], tuple[Step, ...]]:
    """Two lanes that run side by side: the Kubernetes binaries (after courier-kube's), and everything else."""
    kubernetes = Step("kubernetes", KUBE_VERSION, ("kubelet", "kubeadm", "kubectl", "kube-proxy"), build_kubernetes)
    others = (
        Step("own-programs", f"{COREDNS_VERSION}-{sources_digest(NODE_DIR / 'cmd')}", ("pause", "coredns"),
             build_own_programs),
        Step("crictl", CRI_TOOLS_VERSION, ("crictl",), build_crictl),
        Step("local-path-provisioner", LOCAL_PATH_VERSION, ("local-path-provisioner",), build_local_path_provisioner),
    )  # fmt: skip
    return (kubernetes,), others


class Record:
    """built.json: what each step was built from and how long it took (the cold timings)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
        self.lock = threading.Lock()

    def current(self, step: Step, out: Path) -> bool:
        same = self.data.get(step.name, {}).get("key") == step.key
        return same and all((out / name).exists() for name in step.outputs)

    def done(self, name: str, key: str, seconds: float) -> None:
        with self.lock:
            self.data[name] = {"key": key, "seconds": round(seconds, 1)}
            partial = self.path.with_suffix(".partial")
            partial.write_text(json.dumps(self.data, indent=2) + "\n")
            os.replace(partial, self.path)
        log(f"{name} ({key}) built in {seconds:.0f}s")


def ensure_binaries(record: Record) -> tuple[Path, Path]:
    """This node's binaries (bin/) and courier-kube's (control plane, etcd), each built when missing or stale."""
    out = cache_dir() / "bin"
    out.mkdir(parents=True, exist_ok=True)

    def lane(first: Callable[[], object] | None, lane_steps: tuple[Step, ...]) -> None:
        if first is not None:
            first()
        for step in lane_steps:
            if record.current(step, out):
                continue
            log(f"building {step.name} ({step.key})")
            started = time.monotonic()
            step.build(out)
            record.done(step.name, step.key, time.monotonic() - started)

    # courier-kube's control plane goes first in its lane: the node's Kubernetes binaries then find most of their
    # packages in Go's build cache. The other lane shares nothing with it, so it runs alongside on the second core.
    kubernetes, others = steps()
    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="node-go") as pool:
            lanes = [pool.submit(lane, kube.ensure_installed, kubernetes), pool.submit(lane, None, others)]
            for future in lanes:
                future.result()
    except kube.KubeError as exc:
        raise ImageError(str(exc)) from exc
    return out, kube.bin_path("kube-apiserver").parent


# ---------------------------------------------------------------------------------------------------- images


def kubeadm_images(kubeadm: Path) -> dict[str, str]:
    """What kubeadm will look for in the node's containerd, by component: {"kube-apiserver": "<repo>/...:v1.35.4"}."""
    listed = run(
        [str(kubeadm), "config", "images", "list", f"--kubernetes-version={KUBE_VERSION}",
         f"--image-repository={IMAGE_REPOSITORY}"],
        timeout=120,
    ).split()  # fmt: skip
    images = {ref.rsplit("/", 1)[1].split(":")[0]: ref for ref in listed}
    expected = {
        "kube-apiserver": KUBE_VERSION,
        "kube-controller-manager": KUBE_VERSION,
        "kube-scheduler": KUBE_VERSION,
        "kube-proxy": KUBE_VERSION,
        "coredns": COREDNS_VERSION,
        "etcd": ETCD_VERSION.removeprefix("v") + "-",  # kubeadm tags etcd as <version>-<revision>
        "pause": "",
    }
    tags = {name: ref.split(":")[1] for name, ref in images.items()}
    if set(tags) != set(expected) or any(not tags[name].startswith(expected[name]) for name in expected):
        raise ImageError(f"kubeadm {KUBE_VERSION} lists {listed}; node.py builds {versions()}: bring them in step")
    return images


def binary_image(ref: str, binary: Path, *, entrypoint: bool = False) -> None:
    """An image holding one static binary in /usr/local/bin (and an empty /tmp), made with `docker import`."""
    with tempfile.TemporaryDirectory(prefix="courier-node-img-") as tmp:
        archive = Path(tmp) / "rootfs.tar"
        with tarfile.open(archive, "w") as tar:
            for directory, mode in (("usr", 0o755), ("usr/local", 0o755), ("usr/local/bin", 0o755), ("tmp", 0o1777)):
                info = tarfile.TarInfo(directory)
                info.type, info.mode = tarfile.DIRTYPE, mode
                tar.addfile(info)
            info = tar.gettarinfo(str(binary), arcname=f"usr/local/bin/{binary.name}")
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            info.mode = 0o755
            with binary.open("rb") as handle:
                tar.addfile(info, handle)
        changes = ["--change", "ENV PATH=/usr/local/bin:/usr/bin:/bin"]
        if entrypoint:
            changes += ["--change", f'ENTRYPOINT ["/usr/local/bin/{binary.name}"]']
        docker("import", *changes, str(archive), ref, timeout=900)


def build_images(bins: Path, kube_bins: Path) -> list[str]:
    """Every image the node's containerd gets, built in Docker; returns their names."""
    images = kubeadm_images(bins / "kubeadm")
    binaries = {
        "kube-apiserver": kube_bins / "kube-apiserver",
        "kube-controller-manager": kube_bins / "kube-controller-manager",
        "kube-scheduler": kube_bins / "kube-scheduler",
        "etcd": kube_bins / "etcd",
        "coredns": bins / "coredns",
        "pause": bins / "pause",
    }
    for name, binary in binaries.items():
        # kubeadm's manifests name their command; CoreDNS's and the sandbox's come from the image
        binary_image(images[name], binary, entrypoint=name in ("coredns", "pause"))
    with tempfile.TemporaryDirectory(prefix="courier-node-proxy-") as tmp:
        shutil.copy2(bins / "kube-proxy", Path(tmp) / "kube-proxy")
        dockerfile = NODE_DIR / "kube-proxy.Dockerfile"
        imagelib.build(images["kube-proxy"], Path(tmp), dockerfile=dockerfile, name="kind-kube-proxy")
    binary_image(provisioner_image(), bins / "local-path-provisioner")
    return [*images.values(), provisioner_image(), imagelib.ensure_base()]


def provisioner_image() -> str:
    return f"{IMAGE_REPOSITORY}/local-path-provisioner:{LOCAL_PATH_VERSION}"


def render(text: str, pause_image: str) -> str:
    values = {
        "@PAUSE_IMAGE@": pause_image,
        "@POD_SUBNET@": NODE_POD_CIDR,
        "@PROVISIONER_IMAGE@": provisioner_image(),
        "@HELPER_IMAGE@": imagelib.base_ref(),
    }
    for placeholder, value in values.items():
        text = text.replace(placeholder, value)
    return text


def build_node_stage(ref: str, bins: Path, pause_image: str) -> None:
    """The node's file system (node/Dockerfile) with its binaries, before any image is loaded into containerd."""
    with tempfile.TemporaryDirectory(prefix="courier-node-ctx-") as tmp:
        ctx = Path(tmp) / "ctx"
        shutil.copytree(NODE_DIR, ctx, ignore=shutil.ignore_patterns("cmd", "kube-proxy.Dockerfile"))
        for name in TEMPLATE_FILES:
            path = ctx / name
            path.write_text(render(path.read_text(), pause_image))
        (ctx / "rootfs/kind/version").write_text(KUBE_VERSION + "\n")  # kind reads the Kubernetes version here
        (ctx / "bin").mkdir()
        for name in NODE_BINARIES:
            shutil.copy2(bins / name, ctx / "bin" / name)
        imagelib.build(ref, ctx, dockerfile=ctx / "Dockerfile", name="kind-node")


# containerd just for the import: no CRI plugin (it is not needed, and would try to set up pod networking).
IMPORT_CONFIG = 'version = 2\ndisabled_plugins = ["io.containerd.grpc.v1.cri"]\n'


def docker_quietly(*args: str) -> None:
    """A docker command whose failure is fine (removing what may not be there, or is still in use)."""
    subprocess.run([imagelib.docker_bin(), *args], capture_output=True, timeout=600, check=False)  # noqa: S603


def preload_and_commit(stage: str, refs: list[str], ref: str) -> None:
    """Import `refs` into the node's containerd (k8s.io namespace) in a container of `stage`, commit that as `ref`.

    The images go in without being unpacked (only their blobs): no overlay mounts are needed, so the container is not
    privileged, and containerd unpacks each one in the node, on the volume kind mounts at /var, when it first runs.
    """
    name = f"courier-kind-node-build-{os.getpid()}"
    docker_quietly("rm", "-f", "-v", name)
    # /run and /tmp on tmpfs, as in the node: containerd's sockets and the import config stay out of the commit
    tmpfs = ["--tmpfs", "/run", "--tmpfs", "/tmp"]  # noqa: S108 - in the container
    docker("run", "--detach", "--name", name, *tmpfs, "--entrypoint", "sleep", stage, "infinity")
    try:
        docker("exec", "-i", name, "sh", "-c", "cat > /tmp/import.toml", stdin=IMPORT_CONFIG)
        docker("exec", "--detach", name, "sh", "-c", "containerd --config /tmp/import.toml >/tmp/containerd.log 2>&1")
        wait_for_containerd(name)
        log(f"importing {len(refs)} images into the node's containerd")
        with subprocess.Popen([imagelib.docker_bin(), "save", *refs], stdout=subprocess.PIPE) as save:  # noqa: S603
            imported = subprocess.run(  # noqa: S603
                [imagelib.docker_bin(), "exec", "-i", name, "ctr", "--namespace=k8s.io", "images", "import",
                 "--no-unpack", "-"],
                stdin=save.stdout, capture_output=True, text=True, timeout=1800, check=False,
            )  # fmt: skip
        if save.returncode != 0 or imported.returncode != 0:
            raise ImageError(f"loading images into the node failed (docker save {save.returncode}):\n{imported.stderr}")
        listed = docker("exec", name, "ctr", "--namespace=k8s.io", "images", "list", "--quiet").split()
        missing = [r for r in refs if r not in listed and f"docker.io/library/{r}" not in listed]
        if missing:
            raise ImageError(f"not in the node's containerd after the import: {missing} (it has {listed})")
        # containerd must be gone before the commit, so its metadata database is complete on disk
        stop = "pkill -x containerd; while pgrep -x containerd >/dev/null; do sleep 0.2; done"
        docker("exec", name, "sh", "-c", stop)
        docker("commit", "--message", "Kubernetes images imported into containerd (namespace k8s.io)",
               "--change", 'ENTRYPOINT ["/usr/local/bin/entrypoint"]', "--change", 'CMD ["/sbin/init"]',
               name, ref, timeout=1800)  # fmt: skip
    finally:
        docker_quietly("rm", "-f", "-v", name)


def wait_for_containerd(container: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        probe = subprocess.run(  # noqa: S603
            [imagelib.docker_bin(), "exec", container, "ctr", "version"], capture_output=True, text=True, check=False
        )
        if probe.returncode == 0:
            return
        if time.monotonic() > deadline:
            tail = docker("exec", container, "tail", "-n", "20", "/tmp/containerd.log")  # noqa: S108 - in the container
            raise ImageError(f"containerd did not start in the build container:\n{probe.stderr}\n{tail}")
        time.sleep(0.5)


def image_key(versions: object, directory: Path, module: str, base: str) -> str:
    """Ten hex digits for an image's tag, which change with `versions` (anything JSON writes), the files under
    `directory`, the Python module that builds the image (its __file__) and the base image."""
    digest = hashlib.sha256(json.dumps(versions, sort_keys=True).encode())
    digest.update(sources_digest(directory).encode())
    digest.update(Path(module).read_bytes())
    digest.update(docker("image", "inspect", "--format", "{{.Id}}", base).strip().encode())
    return digest.hexdigest()[:10]


def node_ref(base: str) -> str:
    """courier-kind-node:<version>-<key>: the key covers the versions, node/, this file and the base image."""
    return f"{NODE_REPOSITORY}:{KUBE_VERSION}-{image_key(versions(), NODE_DIR, __file__, base)}"


def remove_older_node_images(keep: str) -> None:
    """Each node image is about a gigabyte; older keys go (unless a container still uses one: then docker refuses)."""
    listed = docker("image", "ls", "--format", "{{.Repository}}:{{.Tag}}", NODE_REPOSITORY).split()
    for old in (ref for ref in listed if ref != keep):
        docker_quietly("image", "rm", old)


def ensure_node_image() -> str:
    """The kind node image for KUBE_VERSION, built when missing (a cold build takes many minutes); returns its ref."""
    imagelib.ensure_engine()
    ref = node_ref(imagelib.ensure_base())
    with imagelib.file_lock("kind-node"):
        if imagelib.image_exists(ref):
            return ref
        log(f"building the kind node image {ref}")
        started = time.monotonic()
        record = Record(cache_dir() / "built.json")
        bins, kube_bins = ensure_binaries(record)
        step_started = time.monotonic()
        refs = build_images(bins, kube_bins)
        record.done("images", ",".join(refs), time.monotonic() - step_started)
        step_started = time.monotonic()
        stage = f"{NODE_REPOSITORY}-stage:{ref.split(':')[1]}"
        build_node_stage(stage, bins, next(r for r in refs if "/pause:" in r))
        preload_and_commit(stage, refs, ref)
        docker_quietly("image", "rm", stage)
        record.done("node-image", ref, time.monotonic() - step_started)
        remove_older_node_images(ref)
        log(f"{ref} ready in {time.monotonic() - started:.0f}s")
    return ref


# ---------------------------------------------------------------------------------------------------- kind


def go_install(package: str, target: Path, name: str) -> float:
    """`go install <package>@<version>` (static, stripped), its binary moved to `target`; returns seconds.

    The binary is named after the package's last element (sigs.k8s.io/kind -> kind); output in images/<name>.log."""
    log(f"go install {package}")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f"courier-{name}-") as tmp:
        work = Path(tmp)
        (work / "gotmp").mkdir()
        env = {**kube.go_env(work / "gotmp"), "GOBIN": str(work / "bin")}
        env["GOFLAGS"] = "-buildvcs=false"  # `go install pkg@version` builds in module mode on its own terms
        argv = [go_tool(), "install", "-trimpath", "-ldflags=-s -w", package]
        run(argv, cwd=work, env=env, timeout=3600, log_file=imagelib.images_dir() / f"{name}.log")
        target.parent.mkdir(parents=True, exist_ok=True)
        built = package.split("@")[0].rsplit("/", 1)[1]
        shutil.move(work / "bin" / built, target.with_suffix(".partial"))
        os.replace(target.with_suffix(".partial"), target)
    return time.monotonic() - started


def ensure_go_program(module: str, package: str, version: str, binary: str) -> Path:
    """`package` (a main package of `module`) at `version`, built into <cache>/<module's last element>-<version>/
    <binary> when missing, with built.json beside it (what was built, in how many seconds); returns the binary's path.

    It is built in a throw-away module that requires `module` (courier-kube's go_build), not with `go install
    <package>@<version>`: that asks the module proxy for the module's list of versions too, which the proxy refuses
    for some modules (sigs.k8s.io/prometheus-adapter) while it serves the version itself."""
    name = module.rsplit("/", 1)[1]
    home = imagelib.cache_root() / f"{name}-{version}"
    target = home / binary
    with imagelib.file_lock(name):
        if target.exists():
            return target
        log(f"building {package}@{version} (a cold build takes minutes)")
        try:
            seconds = kube.go_build(name, {module: version}, {}, [package], home, binary)
        except kube.KubeError as exc:
            raise ImageError(str(exc)) from exc
        record = {"module": f"{module}@{version}", "seconds": round(seconds, 1)}
        (home / "built.json").write_text(json.dumps(record, indent=2) + "\n")
        log(f"{name} {version} built in {seconds:.0f}s")
    return target


def ensure_kind() -> Path:
    """kind KIND_VERSION, built with `go install` into the cache; returns the binary's path."""
    target = imagelib.cache_root() / f"kind-{KIND_VERSION}" / "kind"
    with imagelib.file_lock("kind"):
        if target.exists():
            return target
        seconds = go_install(f"sigs.k8s.io/kind@{KIND_VERSION}", target, "kind")
        log(f"kind {KIND_VERSION} built in {seconds:.0f}s")
    return target


def kind_config(*, host_port: int = NODE_PORT, ports: Mapping[int, int] | None = None) -> str:
    """The kind cluster config for ensure_node_image()'s image on this machine: one node, and NodePorts published on
    127.0.0.1 (`ports` maps NodePort to host port; by default NodePort 30080 to host_port).

    - disableDefaultCNI: the node's baked bridge config is the pod network (kind's own CNI image is not there);
      podSubnet matches it.
    - imageRepository: kubeadm's images under the name they were loaded as.
    - enable-aggregator-routing: the API server reaches an aggregated API (the metrics pipeline's) at its Service's
      endpoints, not through the Service's address. A connection to that address opened before kube-proxy routes it
      leaves the node; this machine's network answers it (with 404), and the API server keeps that connection for
      its later availability checks, so the APIService never became Available (CI, once in several runs).
    - failCgroupV1: false and SystemVerification ignored: kubelet 1.35 refuses cgroup v1 unless told, and kubeadm's
      preflight fails on it (a cgroup v2 host needs neither, and is not hurt by them).
    """
    published = dict(ports) if ports is not None else {NODE_PORT: host_port}
    mappings = "".join(
        f"      - containerPort: {node_port}\n"
        f"        hostPort: {host}\n"
        '        listenAddress: "127.0.0.1"\n'
        "        protocol: TCP\n"
        for node_port, host in sorted(published.items())
    )
    return f"""\
kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
networking:
  disableDefaultCNI: true
  podSubnet: "{POD_SUBNET}"
  serviceSubnet: "{SERVICE_SUBNET}"
nodes:
  - role: control-plane
    extraPortMappings:
{mappings}kubeadmConfigPatches:
  - |
    kind: ClusterConfiguration
    imageRepository: "{IMAGE_REPOSITORY}"
    apiServer:
      extraArgs:
        enable-aggregator-routing: "true"
  - |
    kind: InitConfiguration
    nodeRegistration:
      ignorePreflightErrors:
        - SystemVerification
  - |
    kind: KubeletConfiguration
    failCgroupV1: false
"""
