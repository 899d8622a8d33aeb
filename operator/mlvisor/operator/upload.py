"""``mlvisor upload FILE pvc://CLAIM/PATH``: put a local file onto a PersistentVolumeClaim.

A dataset on a claim (``spec.dataset.uri: pvc://<claim>/<path>`` or ``spec.dataset.csv``) has to
get there somehow; this is the way without writing a pod by hand, as ``kubectl cp`` would need:

1. a short-lived pod (:func:`mlvisor.operator.builders.build_upload_pod`: the claim mounted
   read-write, the restricted security context of every mlvisor pod, no service account
   token, a lifetime after which it ends on its own) is created in the namespace and awaited;
2. ``python -m mlvisor.operator.receive`` runs in it through the API server's exec channel
   (what ``kubectl exec -i`` uses) and reads exactly the file's size from stdin, checks its
   SHA-256 and renames it into place, so the claim holds the whole file or the one before;
3. the pod is deleted, whatever happened.

The user needs ``create`` and ``delete`` on pods and ``create`` on ``pods/exec`` in the
namespace (the mlvisor operator's own role is not involved). With ``--local``, the file is
copied to where ``mlvisor run`` keeps that claim (``<data-dir>/volumes/<claim>/<path>``), the
same way (temporary name, checksum, rename), so one YAML file runs on both.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import secrets
import sys
import time
from pathlib import Path
from typing import Any, cast

#: How long the upload pod lives at most (it is deleted as soon as the upload ends).
DEFAULT_LIFETIME_SECONDS = 900
CHUNK = 1 << 20


class UploadError(Exception):
    """The upload failed; str() says why."""


def parse_target(target: str) -> tuple[str, str]:
    """(claim, path inside it) of ``pvc://<claim>/<path>``."""
    from mlvisor import api

    if not target.startswith("pvc://"):
        raise UploadError(f"{target!r}: expected pvc://<claim>/<path>")
    claim, _, path = target[len("pvc://"):].partition("/")
    import re

    if not re.match(api.DNS_LABEL, claim) or len(claim) > 63:
        raise UploadError(f"{target!r}: the claim {claim!r} is not {api.PATTERN_WORDS[api.DNS_LABEL]}")
    parts = path.strip("/").split("/")
    if not path.strip("/") or path.endswith("/") or any(p in ("", ".", "..") for p in parts):
        raise UploadError(f"{target!r}: expected a file path inside the claim, without '..' or empty segments")
    return claim, "/".join(parts)


def file_digest(path: Path) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def upload_local(source: Path, claim: str, path: str, data_dir: Path) -> Path:
    """Copy ``source`` to ``<data-dir>/volumes/<claim>/<path>`` (temporary name, checksum, rename)."""
    from mlvisor.operator.receive import receive

    dest = data_dir / "volumes" / claim / path
    size, sha = file_digest(source)
    with open(source, "rb") as f:
        receive(dest, size, sha, f)
    return dest


def _pod_phase(api: Any, name: str, namespace: str) -> tuple[str, str]:
    """(phase, why it is not running yet: a waiting container's reason and message)."""
    pod = api.read_namespaced_pod(name, namespace)
    why = ""
    for cs in (pod.status.container_statuses or []):
        waiting = cs.state.waiting if cs.state else None
        if waiting is not None and waiting.reason not in (None, "ContainerCreating"):
            why = f"{waiting.reason}: {waiting.message or ''}".strip(": ")
    for c in (pod.status.conditions or []):
        if c.type == "PodScheduled" and c.status == "False":
            why = why or f"{c.reason}: {c.message or ''}".strip(": ")
    return pod.status.phase or "Pending", why


def upload_to_cluster(source: Path, claim: str, path: str, namespace: str, image: str,
                      kubeconfig: str | None, timeout: float, log: Any = sys.stderr) -> dict[str, Any]:
    from kubernetes import client
    from kubernetes.client.rest import ApiException
    from kubernetes.stream import stream

    from mlvisor.operator.builders import UPLOAD_MOUNT, build_upload_pod
    from mlvisor.operator.kube.client import load_configuration

    size, sha = file_digest(source)
    core = client.CoreV1Api(client.ApiClient(load_configuration(kubeconfig)))
    name = f"mlvisor-upload-{secrets.token_hex(4)}"
    manifest = build_upload_pod(name, namespace, claim, image, int(max(timeout, 60)) + 60)
    try:
        core.create_namespaced_pod(namespace, cast(Any, manifest))  # the client takes a plain dict as JSON
    except ApiException as e:
        raise UploadError(f"cannot create the upload pod {namespace}/{name}: {e.status} {e.reason}: "
                          f"{_message(e)}") from None
    print(f"upload pod {namespace}/{name} created; waiting for it to run", file=log, flush=True)
    try:
        deadline = time.monotonic() + timeout
        phase, why = "Pending", ""
        while time.monotonic() < deadline:
            phase, why = _pod_phase(core, name, namespace)
            if phase == "Running":
                break
            if phase in ("Succeeded", "Failed"):
                raise UploadError(f"the upload pod {namespace}/{name} ended ({phase}) before the upload")
            time.sleep(0.5)
        else:
            raise UploadError(f"the upload pod {namespace}/{name} did not run within {timeout:g} s"
                              + (f": {why}" if why else " (is the claim bound? kubectl describe pvc)"))
        dest = f"{UPLOAD_MOUNT}/{path}"
        ws = stream(core.connect_get_namespaced_pod_exec, name, namespace, container="upload",
                    command=["python", "-m", "mlvisor.operator.receive", dest, str(size), sha],
                    stdin=True, stdout=True, stderr=True, tty=False, _preload_content=False, binary=True)
        out, err = b"", b""
        try:
            with open(source, "rb") as f:
                for chunk in iter(lambda: f.read(CHUNK), b""):
                    ws.write_stdin(chunk)
                    ws.update(timeout=0)
                    out += ws.read_stdout(timeout=0) or b""
                    err += ws.read_stderr(timeout=0) or b""
            while ws.is_open() and time.monotonic() < deadline:
                ws.update(timeout=1)
                out += ws.read_stdout(timeout=0) or b""
                err += ws.read_stderr(timeout=0) or b""
            code = ws.returncode
        finally:
            ws.close()
        if code is None:
            raise UploadError(f"writing {dest} in the upload pod did not finish within {timeout:g} s")
        if code != 0:
            said = err.decode(errors="replace").strip() or out.decode(errors="replace").strip()
            raise UploadError(f"writing {dest} in the upload pod failed (exit {code}): {said}")
        try:
            done: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise UploadError(f"the upload pod's receiver said nothing understandable: {out!r}") from None
        if done.get("sha256") != sha or done.get("bytes") != size:
            raise UploadError(f"the upload pod received {done}, expected {size} bytes with sha256 {sha}")
        return done
    finally:
        try:
            core.delete_namespaced_pod(name, namespace, grace_period_seconds=0)
        except ApiException as e:
            if e.status != 404:
                print(f"note: could not delete the upload pod {namespace}/{name}: {e.status} {e.reason}; "
                      f"it ends on its own within {manifest['spec']['activeDeadlineSeconds']} s", file=log)


def _message(e: Any) -> str:
    try:
        return str(json.loads(e.body).get("message") or e.reason)
    except (TypeError, ValueError, AttributeError):
        return str(e.reason)


def register(sub: Any) -> None:
    p = sub.add_parser(
        "upload",
        help="put a local file onto a PersistentVolumeClaim (pvc://claim/path), for spec.dataset",
        description=(
            "Copy FILE onto a PersistentVolumeClaim through a short-lived restricted pod (created, used "
            "through the exec channel, deleted), checked by SHA-256 and renamed into place, so that "
            "spec.dataset.uri: pvc://CLAIM/PATH finds it. --local copies it to where `mlvisor run` keeps "
            "the claim (<data-dir>/volumes/CLAIM/PATH) instead. Needs create/delete on pods and create on "
            "pods/exec in the namespace."
        ),
    )
    p.add_argument("file", type=Path, metavar="FILE")
    p.add_argument("target", metavar="pvc://CLAIM/PATH")
    p.add_argument("--namespace", "-n", default="default", help="namespace of the claim (default: default)")
    p.add_argument("--image", default=os.environ.get("MLVISOR_IMAGE", "mlvisor:dev"),
                   help="image of the upload pod: mlvisor's own (env MLVISOR_IMAGE; default mlvisor:dev)")
    p.add_argument("--kubeconfig", default=None, help="default: $KUBECONFIG, then ~/.kube/config")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the pod and the copy")
    p.add_argument("--local", action="store_true", help="copy for `mlvisor run` instead of to a cluster")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="with --local: mlvisor run's data directory (default ~/.cache/mlvisor)")
    p.set_defaults(func=upload_command)


def upload_command(args: argparse.Namespace) -> int:
    try:
        claim, path = parse_target(args.target)
        if not args.file.is_file():
            raise UploadError(f"{args.file}: no such file")
        if args.local or args.data_dir is not None:
            from mlvisor.operator.local.cli import default_data_dir

            data_dir = (args.data_dir or default_data_dir()).expanduser().resolve()
            dest = upload_local(args.file, claim, path, data_dir)
            size, sha = file_digest(dest)
            print(f"{args.file} -> {args.target} ({dest}): {size} bytes, sha256 {sha}")
            return 0
        done = upload_to_cluster(args.file, claim, path, args.namespace, args.image, args.kubeconfig, args.timeout)
        print(f"{args.file} -> {args.target} in namespace {args.namespace}: {done['bytes']} bytes, "
              f"sha256 {done['sha256']}")
        return 0
    except UploadError as e:
        print(f"mlvisor upload: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"mlvisor upload: {e}", file=sys.stderr)
        return 1

