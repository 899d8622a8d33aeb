"""The node's images: a pause image compiled here, and mlvisor's own image built from its Dockerfile.

- **pause** (``registry.k8s.io/pause:3.10``, containerd's sandbox image): ``pause/pause.c``
  compiled with ``gcc -Os -static`` and written as a one-layer OCI image archive by this module
  (no image builder involved).
- **mlvisor** (``docker.io/library/mlvisor:dev``, what ``image: mlvisor:dev`` in the manifests
  resolves to): the repository's ``Dockerfile`` built with docker, podman or buildah, whichever
  answers first. Its base is ``python:3.11-slim`` when the builder can pull it; where the
  registry cannot be reached, a base made here stands in for it: ``debootstrap
  --variant=minbase bookworm`` with Debian's python3.11, python3-venv and python-is-python3
  (the same Python minor on the same Debian release), passed as ``--build-arg BASE=...``.
  Users keep ``python:3.11-slim``: the Dockerfile's ``ARG BASE`` defaults to it.

Every image is cached by content under ``~/.cache/mlvisor/images/`` (``MLVISOR_IMAGE_CACHE``)
as an image archive that ``ctr images import`` reads: the pause image by the hash of pause.c,
the base by its recipe, and mlvisor's image by the hash of everything the build reads (the
Dockerfile, .dockerignore, pyproject.toml, README.md and the three source roots, as the
.dockerignore filters them) and of the base's recipe. A warm run finds the archive and builds
nothing; a changed source rebuilds, reusing the builder's dependency layer (which only
pyproject.toml invalidates).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from helpers import gobuild

REPO = Path(__file__).resolve().parents[2]
PAUSE_SOURCE = Path(__file__).resolve().parent / "pause" / "pause.c"
PAUSE_REF = "registry.k8s.io/pause:3.10"
IMAGE_REF = "docker.io/library/mlvisor:dev"
REGISTRY_BASE = "docker.io/library/python:3.11-slim"
BASE_SUITE = "bookworm"
BASE_PACKAGES = ("python3.11", "python3-venv", "python-is-python3", "ca-certificates")
# Removed from the debootstrap tree: nothing in the image reads them (python:3.11-slim has none either).
BASE_TRIM = ("var/lib/apt/lists", "var/cache/apt", "var/cache/debconf", "usr/share/doc", "usr/share/man",
             "usr/share/info", "usr/share/locale", "usr/share/lintian", "var/log")
# What the Dockerfile's build context holds (.dockerignore lets nothing else in).
CONTEXT_FILES = ("Dockerfile", ".dockerignore", "pyproject.toml", "README.md")
CONTEXT_ROOTS = ("operator", "server", "trainer")
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


class ImageError(RuntimeError):
    """An image could not be made; the message carries the tool's own output."""


def cache_root() -> Path:
    return gobuild.cache_root("MLVISOR_IMAGE_CACHE", "images")


def _run(argv: list[str], what: str, timeout: float = 1800, **kw) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout, **kw)
    if proc.returncode != 0:
        raise ImageError(f"{what}: `{' '.join(argv)}` exited {proc.returncode}:\n{proc.stdout[-6000:]}")
    return proc


# ------------------------------------------------------------------------- OCI image archives


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_oci_archive(out: Path, layer: Path, ref: str, config: dict, created_by: str) -> None:
    """A one-layer OCI image layout in a tar file, named ``ref`` (what ``ctr images import`` reads).

    ``layer`` is an uncompressed tar of the root filesystem; ``config`` the image's run
    configuration (Entrypoint, Env, User...); ``created_by`` the history entry of the layer
    (builders check that the history accounts for every layer).
    """
    layer_digest = _sha256_file(layer)
    created = "1970-01-01T00:00:00Z"
    image_config = json.dumps({
        "architecture": "amd64", "os": "linux", "created": created, "config": config,
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{layer_digest}"]},
        "history": [{"created": created, "created_by": created_by}],
    }, sort_keys=True).encode()
    config_digest = hashlib.sha256(image_config).hexdigest()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": f"sha256:{config_digest}", "size": len(image_config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": f"sha256:{layer_digest}", "size": layer.stat().st_size}],
    }, sort_keys=True).encode()
    manifest_digest = hashlib.sha256(manifest).hexdigest()
    index = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "digest": f"sha256:{manifest_digest}", "size": len(manifest),
                       "annotations": {"io.containerd.image.name": ref,
                                       "org.opencontainers.image.ref.name": ref.rsplit(":", 1)[1]}}],
    }, sort_keys=True).encode()
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    with tarfile.open(tmp, "w") as tar:
        def add_bytes(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        add_bytes("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        add_bytes("index.json", index)
        add_bytes(f"blobs/sha256/{manifest_digest}", manifest)
        add_bytes(f"blobs/sha256/{config_digest}", image_config)
        tar.add(layer, arcname=f"blobs/sha256/{layer_digest}")
    os.replace(tmp, out)


def _root_filter(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
    # Mount points stay, their contents go: the runtime mounts /dev, /proc, /sys and /run.
    parts = info.name.split("/")
    if len(parts) > 2 and parts[1] in ("dev", "proc", "sys", "run"):
        return None
    info.uname = info.gname = ""
    return info


# ------------------------------------------------------------------------------------ pause


def ensure_pause(log=sys.stderr) -> Path:
    """The pause image archive, compiled and written once per version of pause.c."""
    key = hashlib.sha256(PAUSE_SOURCE.read_bytes()).hexdigest()[:12]
    out = cache_root() / f"pause-{key}.tar"
    if out.exists():
        return out
    gcc = shutil.which("gcc")
    if gcc is None:
        raise ImageError("gcc is not on PATH: the pause image is compiled from tests/controlplane/pause/pause.c")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        root = Path(tmp) / "root"
        root.mkdir()
        _run([gcc, "-Os", "-static", "-s", "-Wall", "-o", str(root / "pause"), str(PAUSE_SOURCE)], "compiling pause.c")
        layer = Path(tmp) / "layer.tar"
        with tarfile.open(layer, "w") as tar:
            tar.add(root / "pause", arcname="pause", filter=lambda i: _owned_by_root(i, 0o755))
        write_oci_archive(out, layer, PAUSE_REF, {"Entrypoint": ["/pause"], "User": "65535:65535"},
                          "gcc -Os -static pause.c")
    print(f"built the pause image {out}", file=log, flush=True)
    return out


def _owned_by_root(info: tarfile.TarInfo, mode: int) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mode = mode
    return info


# ------------------------------------------------------------------------------- the builder


@dataclass(frozen=True)
class Builder:
    """docker, podman or buildah: the commands that differ between them."""

    tool: str

    def build(self, tag: str, base: str | None, local_base: bool) -> list[str]:
        argv = [self.tool]
        if self.tool == "buildah":
            argv += ["bud", "--layers"]
        else:
            argv += ["build"]
        argv += ["-t", tag, "-f", str(REPO / "Dockerfile")]
        if base:
            argv += ["--build-arg", f"BASE={base}"]
        if local_base and self.tool != "docker":
            argv += ["--pull-never"] if self.tool == "buildah" else ["--pull=never"]
        if self.tool != "docker":
            # pip inside the build reaches PyPI as the host does: through the host's CA bundle
            # (which on some machines holds the CA of a TLS-inspecting egress) and its network.
            argv += ["--network", "host"]
            if HOST_CA_BUNDLE.is_file():
                argv += ["-v", f"{HOST_CA_BUNDLE}:{HOST_CA_BUNDLE}:ro"]
        return [*argv, str(REPO)]

    def save(self, tag: str, out: Path) -> list[str]:
        if self.tool == "buildah":
            return ["buildah", "push", "--quiet", tag, f"docker-archive:{out}:{IMAGE_REF}"]
        return [self.tool, "save", "-o", str(out), tag]

    def image_id(self, tag: str) -> str | None:
        argv = (["buildah", "inspect", "--type", "image", "--format", "{{.FromImageID}}", tag] if self.tool == "buildah"
                else [self.tool, "image", "inspect", "--format", "{{.Id}}", tag])
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        return (proc.stdout.strip() or None) if proc.returncode == 0 else None

    def remove(self, image_id: str) -> None:
        subprocess.run([self.tool, "rmi", image_id], capture_output=True, text=True, timeout=300)

    def load_base(self, archive: Path) -> str:
        """Put the base archive in the builder's store under base_ref(); returns that name."""
        if self.tool == "docker":
            _run(["docker", "load", "-i", str(archive)], "loading the local base", timeout=600)
        else:  # buildah and podman read the archive as a transport; the ID they print is tagged
            image_id = _run([self.tool, "pull", "--quiet", f"oci-archive:{archive}"], "loading the local base",
                            timeout=600).stdout.split()[-1]
            _run([self.tool, "tag", image_id, base_ref()], "naming the local base")
        return base_ref()

    def pull(self, ref: str) -> list[str]:
        return [self.tool, "pull", ref] if self.tool != "buildah" else ["buildah", "pull", "--quiet", ref]


def find_builder() -> Builder:
    """The first of docker, podman, buildah that works here (``MLVISOR_IMAGE_BUILDER`` chooses one)."""
    wanted = os.environ.get("MLVISOR_IMAGE_BUILDER")
    probes = {"docker": ["docker", "info", "--format", "{{.ServerVersion}}"],
              "podman": ["podman", "info", "--format", "{{.Version.Version}}"],
              "buildah": ["buildah", "version"]}
    tried = []
    for tool in ([wanted] if wanted else list(probes)):
        if shutil.which(tool) is None:
            tried.append(f"{tool}: not installed")
            continue
        proc = subprocess.run(probes.get(tool, [tool, "version"]), capture_output=True, text=True, timeout=60)
        if proc.returncode == 0:
            return Builder(tool)
        tried.append(f"{tool}: {(proc.stderr or proc.stdout).strip().splitlines()[-1:]}")
    raise ImageError("no image builder works here (docker, podman or buildah; Debian: apt-get install buildah): "
                     + "; ".join(tried))


# --------------------------------------------------------------------------- the local base


def _base_key() -> str:
    recipe = json.dumps({"suite": BASE_SUITE, "packages": BASE_PACKAGES, "trim": BASE_TRIM, "variant": "minbase",
                         "format": 2})
    return hashlib.sha256(recipe.encode()).hexdigest()[:12]


def base_ref() -> str:
    return f"localhost/mlvisor-base:{BASE_SUITE}-{_base_key()}"


def ensure_base(log=sys.stderr) -> Path:
    """The stand-in for python:3.11-slim as an OCI archive (debootstrap, once per recipe)."""
    out = cache_root() / f"base-{BASE_SUITE}-{_base_key()}.tar"
    if out.exists():
        return out
    debootstrap = shutil.which("debootstrap") or ("/usr/sbin/debootstrap" if Path("/usr/sbin/debootstrap").exists() else None)
    if debootstrap is None:
        raise ImageError("debootstrap is not installed (Debian: apt-get install debootstrap); it makes the image's "
                         "base where python:3.11-slim cannot be pulled")
    mirror = os.environ.get("MLVISOR_DEBIAN_MIRROR", "http://deb.debian.org/debian")
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    print(f"making the image's base: debootstrap --variant=minbase {BASE_SUITE} + {', '.join(BASE_PACKAGES)} "
          "(about a minute)", file=log, flush=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".base-") as tmp:
        root = Path(tmp) / "root"
        _run([debootstrap, "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", BASE_SUITE, str(root), mirror],
             "debootstrap")
        for rel in BASE_TRIM:
            target = root / rel
            if target.is_dir():
                for child in target.iterdir():
                    shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
        layer = Path(tmp) / "layer.tar"
        with tarfile.open(layer, "w") as tar:
            for child in sorted(root.iterdir()):
                tar.add(child, arcname=child.name, filter=_root_filter)
        write_oci_archive(out, layer, base_ref(), {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8"],
            "Cmd": ["python3"],
        }, f"debootstrap --variant=minbase --include={','.join(BASE_PACKAGES)} {BASE_SUITE}")
    print(f"made the base {out} in {time.monotonic() - t0:.0f} s ({out.stat().st_size / 2**20:.0f} MiB)",
          file=log, flush=True)
    return out


# ----------------------------------------------------------------------------- mlvisor:dev


def _context_files() -> Iterator[Path]:
    for name in CONTEXT_FILES:
        yield REPO / name
    for root in CONTEXT_ROOTS:
        for path in sorted((REPO / root).rglob("*")):
            rel = path.relative_to(REPO)
            if path.is_dir() or "__pycache__" in rel.parts or path.suffix == ".pyc" \
                    or any(p.endswith(".egg-info") for p in rel.parts):
                continue
            yield path


def context_hash() -> str:
    """The hash of everything the Dockerfile's build reads (paths and contents) and of the local base's recipe."""
    h = hashlib.sha256(_base_key().encode())
    for path in _context_files():
        h.update(str(path.relative_to(REPO)).encode() + b"\0")
        h.update(path.read_bytes())
        h.update(b"\0")
    return h.hexdigest()[:12]


def _registry_base(builder: Builder, log) -> bool:
    """True when the builder has or can pull python:3.11-slim (MLVISOR_IMAGE_BASE=local skips the try)."""
    if os.environ.get("MLVISOR_IMAGE_BASE") == "local":
        return False
    try:
        proc = subprocess.run(builder.pull(REGISTRY_BASE), capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        return False
    if proc.returncode != 0:
        why = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["?"]
        print(f"cannot pull {REGISTRY_BASE} ({why[0][:200]}): building on a local base instead", file=log, flush=True)
    return proc.returncode == 0


def image_archive() -> Path:
    return cache_root() / f"mlvisor-{context_hash()}.tar"


def ensure_image(log=sys.stderr) -> Path:
    """mlvisor's image as an archive ctr can import: from the cache, else built from the Dockerfile."""
    out = image_archive()
    if out.exists():
        return out
    builder = find_builder()
    out.parent.mkdir(parents=True, exist_ok=True)
    base: str | None = None
    local = not _registry_base(builder, log)
    if local:
        base = builder.load_base(ensure_base(log))
    t0 = time.monotonic()
    print(f"building {IMAGE_REF} from the Dockerfile with {builder.tool}"
          f"{f' on {base}' if base else ''} (a few minutes the first time)", file=log, flush=True)
    tag = "localhost/mlvisor:dev" if builder.tool != "docker" else "mlvisor:dev"
    previous = builder.image_id(tag)
    _run(builder.build(tag, base, local), f"{builder.tool} build", timeout=3600, cwd=REPO)
    if previous and previous != builder.image_id(tag):
        # The image this build replaces: its venv layer alone is hundreds of MiB. The build
        # stage's cached layers stay, so the next build reuses the dependency layer.
        builder.remove(previous)
    built = time.monotonic() - t0
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    _run(builder.save(tag, tmp), "saving the image", timeout=900)
    os.replace(tmp, out)
    _prune(out)
    print(f"built {IMAGE_REF} in {built:.0f} s (+{time.monotonic() - t0 - built:.0f} s to save): {out} "
          f"({out.stat().st_size / 2**20:.0f} MiB)", file=log, flush=True)
    return out


def _prune(keep: Path, kept: int = 2) -> None:
    """Older mlvisor image archives beyond the newest ``kept`` go (each is hundreds of MiB)."""
    archives = sorted(keep.parent.glob("mlvisor-*.tar"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in archives[kept:]:
        if old != keep:
            old.unlink(missing_ok=True)


def main() -> int:
    try:
        print(ensure_image())
    except ImageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
