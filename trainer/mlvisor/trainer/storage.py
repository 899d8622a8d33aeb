"""Files by URI: datasets in, artifacts out to an object store, artifacts in for the server.

URIs (``mlvisor.api``: ``spec.dataset.uri``, ``spec.output.uri``, a ModelServer's ``spec.model.uri``):

- ``s3://<bucket>/<key>``: Amazon S3 or any S3-compatible store (MinIO, Ceph, versitygw, ...);
- ``https://<host>/<path>`` and ``http://``: a plain GET (read only);
- ``pvc://<claim>/<path>``: a PersistentVolumeClaim, mounted in the pod (the path is relative
  to the mount, ``MLVISOR_DATA_DIR``); ``mlvisor run`` plays it with ``<data-dir>/volumes/<claim>/``;
- ``file:///<path>``: a file of this machine (``mlvisor run``).

The library is obstore (Python bindings of the Rust ``object_store`` crate, which Apache Arrow
and DataFusion use): one small wheel without dependencies for S3, HTTP (and GCS and Azure
should they be wanted), typed, and with the AWS variables' usual meaning. fsspec + s3fs would
bring aiobotocore, botocore and aiohttp for the same two calls; boto3 speaks S3 only.

**Credentials.** A spec names a Secret (``credentials: {secretName}``); the operator passes its
keys to the pods that need them as environment variables prefixed with the role, so one pod can
read a dataset and write an artifact with two different Secrets: ``MLVISOR_DATASET_AWS_ACCESS_KEY_ID``,
``MLVISOR_OUTPUT_...``, ``MLVISOR_MODEL_...`` (keys :data:`CREDENTIAL_KEYS`). Without them the
process's own ``AWS_*`` variables are used (``mlvisor run``'s environment, a workload identity),
and with no access key at all the requests are anonymous (a public bucket). The values are
never logged: every error of the store is put into words here (:func:`_failure`) without the
store's own text, which may quote the request (an access key id) back.

**Downloads are verified and atomic.** A file is written under a temporary name next to its
destination, its size checked against the object's (and an artifact's model against the SHA-256
in its metadata.json), then renamed into place: a partial file is never used. **Uploads** of an
artifact put model.skops first and metadata.json last: a version exists for readers only once
its metadata.json does, as on a volume, where it appears by one rename.
"""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import os
import re
import secrets
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlvisor import api
from mlvisor.trainer.artifact import (
    METADATA_FILE,
    MODEL_FILE,
    ArtifactError,
    ArtifactMetadata,
    ArtifactMissing,
    read_metadata,
)

CREDENTIAL_KEYS = api.CREDENTIAL_KEYS
#: Variables by which a process has an identity without keys (a workload identity, ECS task role).
_IDENTITY_VARIABLES = ("AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                       "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
CHUNK_BYTES = 1 << 20
REMOTE_SCHEMES = ("s3://", "https://", "http://")

if TYPE_CHECKING:
    from obstore.store import ClientConfig, RetryConfig, S3Config


class Role(enum.StrEnum):
    """Who reads or writes: the prefix of its credential variables."""

    DATASET = "DATASET"
    OUTPUT = "OUTPUT"
    MODEL = "MODEL"

    def variable(self, key: str) -> str:
        return api.credential_variable(self.value, key)


class StorageError(Exception):
    """Reading or writing a URI failed, for a reason retrying will not change (str: why, in words)."""


class StorageMissing(StorageError):
    """The object is not there (404)."""


class StorageUnreachable(StorageError):
    """The store did not answer (connection refused, timeout): worth retrying."""


def is_remote(uri: str) -> bool:
    return uri.startswith(REMOTE_SCHEMES)


def shown_name(uri: str) -> str:
    """How messages name the file of a uri: its path (key) without the scheme and bucket or claim."""
    rest = uri.split("://", 1)[-1]
    return rest.split("/", 1)[-1] if not uri.startswith("file://") else rest


def local_path(uri: str, data_dir: Path) -> Path:
    """The file a ``pvc://`` (under ``data_dir``, where the claim is) or ``file://`` uri names."""
    if uri.startswith("pvc://"):
        return Path(data_dir) / uri[len("pvc://"):].split("/", 1)[1]
    if uri.startswith("file://"):
        return Path(uri[len("file://"):])
    raise ValueError(f"{uri!r} is not a pvc:// or file:// uri")


def split(uri: str) -> tuple[str, str]:
    """(store root, key): ``s3://b/k/x`` -> (``s3://b``, ``k/x``); ``https://h/p`` -> (``https://h``, ``p``)."""
    scheme, rest = uri.split("://", 1)
    root, _, key = rest.partition("/")
    return f"{scheme}://{root}", key


def credentials(role: Role, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The AWS_* values a process uses for ``role``: the role's Secret (MLVISOR_<ROLE>_*) when it
    was given one, else its own AWS_* variables. Never logged."""
    env = os.environ if env is None else env
    given = {k: env[role.variable(k)] for k in CREDENTIAL_KEYS if env.get(role.variable(k))}
    if given:
        return given
    return {k: env[k] for k in (*CREDENTIAL_KEYS, *_IDENTITY_VARIABLES) if env.get(k)}


def _store(root: str, role: Role, env: Mapping[str, str] | None) -> Any:
    from obstore.store import HTTPStore, S3Store

    client: ClientConfig = {"connect_timeout": dt.timedelta(seconds=10), "timeout": dt.timedelta(hours=1)}
    retry: RetryConfig = {"max_retries": 3, "retry_timeout": dt.timedelta(seconds=60),
                          "backoff": {"init_backoff": dt.timedelta(milliseconds=200),
                                      "max_backoff": dt.timedelta(seconds=5), "base": 2}}
    if not root.startswith("s3://"):
        return HTTPStore.from_url(root, client_options=client, retry_config=retry)
    creds = credentials(role, env)
    config: S3Config = {"region": creds.get("AWS_REGION") or "us-east-1"}
    endpoint = creds.get("AWS_ENDPOINT_URL")
    if endpoint:
        config["endpoint"] = endpoint
        if endpoint.startswith("http://"):
            client["allow_http"] = True
    if creds.get("AWS_ACCESS_KEY_ID"):
        config["access_key_id"] = creds["AWS_ACCESS_KEY_ID"]
        config["secret_access_key"] = creds.get("AWS_SECRET_ACCESS_KEY", "")
        if creds.get("AWS_SESSION_TOKEN"):
            config["session_token"] = creds["AWS_SESSION_TOKEN"]
    elif not any(creds.get(k) for k in _IDENTITY_VARIABLES):
        config["skip_signature"] = True  # anonymous: a public bucket
    return S3Store(root[len("s3://"):], config=config, client_options=client, retry_config=retry)


_CODE = re.compile(r"<Code>([A-Za-z]+)</Code>")
_STATUS = re.compile(r"status code: (\d{3})")


def _failure(e: Exception, uri: str, role: Role) -> StorageError:
    """A store's error in words, without its text (it may quote the request, an access key id back)."""
    from obstore import exceptions as oe

    text = str(e)
    code = _CODE.search(text)
    status = _STATUS.search(text)
    detail = " ".join(x for x in (status.group(1) if status else "", code.group(1) if code else "") if x)
    detail = f" ({detail})" if detail else ""
    secret = {Role.DATASET: "spec.dataset.credentials", Role.OUTPUT: "spec.output.credentials",
              Role.MODEL: "spec.model.credentials"}[role]
    if isinstance(e, FileNotFoundError | oe.NotFoundError):
        if code is not None and code.group(1) == "NoSuchBucket":
            return StorageMissing(f"{uri}: the bucket does not exist{detail}")
        return StorageMissing(f"{uri}: not found{detail}")
    if isinstance(e, oe.PermissionDeniedError | oe.UnauthenticatedError):
        return StorageError(f"{uri}: access denied{detail}: check the Secret named in {secret} (its "
                            "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_ENDPOINT_URL), or the bucket's policy")
    lowered = text.lower()
    for marker, words in (("connection refused", "connection refused"), ("timed out", "timed out"),
                          ("dns error", "the host name does not resolve"), ("tcp connect", "cannot connect"),
                          ("error sending request", "no answer")):
        if marker in lowered:
            return StorageUnreachable(f"{uri}: cannot reach the store: {words}")
    return StorageError(f"{uri}: the store refused the request ({type(e).__name__}{detail.replace(' (', ', ').rstrip(')')})")


def _call(what: Any, uri: str, role: Role) -> Any:
    from obstore.exceptions import BaseError

    try:
        return what()
    except (BaseError, OSError) as e:
        raise _failure(e, uri, role) from None


def head(uri: str, role: Role, env: Mapping[str, str] | None = None) -> int:
    """The size of the object at ``uri``; StorageMissing when there is none."""
    import obstore

    root, key = split(uri)
    store = _store(root, role, env)
    meta = _call(lambda: obstore.head(store, key), uri, role)
    return int(meta["size"])


def download(uri: str, dest: Path, role: Role, env: Mapping[str, str] | None = None) -> int:
    """Copy the object at ``uri`` to ``dest``, verified (its size) and atomic; returns the size."""
    import obstore

    root, key = split(uri)
    store = _store(root, role, env)
    result = _call(lambda: obstore.get(store, key), uri, role)
    expected = result.meta.get("size")
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(f".{dest.name}.part-{secrets.token_hex(4)}")
    received = 0
    from obstore.exceptions import BaseError

    try:
        with open(part, "wb") as f:
            try:
                for chunk in result.stream(min_chunk_size=CHUNK_BYTES):
                    f.write(chunk)
                    received += len(chunk)
            except BaseError as e:
                raise _failure(e, uri, role) from None
            f.flush()
            os.fsync(f.fileno())
        if expected is not None and received != int(expected):
            raise StorageUnreachable(f"{uri}: the download stopped at {received} of {expected} bytes")
        os.replace(part, dest)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    return received


def _read_bytes(uri: str, role: Role, env: Mapping[str, str] | None) -> bytes:
    import obstore

    root, key = split(uri)
    store = _store(root, role, env)
    result = _call(lambda: obstore.get(store, key), uri, role)
    return bytes(_call(result.bytes, uri, role))


def join(prefix: str, *parts: str) -> str:
    """``s3://b/models`` + ``v1`` -> ``s3://b/models/v1``."""
    return "/".join([prefix.rstrip("/"), *(p.strip("/") for p in parts)])


def artifact_uri(output_uri: str, version: str) -> str:
    """Where a version of a job with ``spec.output.uri`` goes: ``<uri>/<version>/``."""
    return join(output_uri, version) + "/"


def upload_artifact(version_dir: Path, uri: str, env: Mapping[str, str] | None = None) -> str:
    """Put a complete local artifact version at ``uri`` (``<output.uri>/<version>/``): the model
    and the files beside it first, then metadata.json, whose presence is what makes the version exist; each checked
    by its size once written. Returns ``uri``. An existing complete version is left as it is."""
    import obstore

    root, key = split(uri)
    key = key.rstrip("/")
    store = _store(root, Role.OUTPUT, env)
    meta_key = f"{key}/{METADATA_FILE}"
    try:
        _call(lambda: obstore.head(store, meta_key), uri, Role.OUTPUT)
        return uri  # a restarted writer of the same version: already complete
    except StorageMissing:
        pass
    # The model and any files beside it (a search's trials.jsonl) first, metadata.json last.
    others = sorted(p.name for p in Path(version_dir).iterdir()
                    if p.is_file() and p.name not in (MODEL_FILE, METADATA_FILE))
    for name in (MODEL_FILE, *others, METADATA_FILE):
        path = Path(version_dir) / name
        size = path.stat().st_size
        _call(lambda p=path, n=name: obstore.put(store, f"{key}/{n}", p, chunk_size=8 * CHUNK_BYTES), uri, Role.OUTPUT)
        written = int(_call(lambda n=name: obstore.head(store, f"{key}/{n}"), uri, Role.OUTPUT)["size"])
        if written != size:
            raise StorageError(f"{join(uri, name)}: the store holds {written} bytes, {size} were written")
    return uri


def fetch_artifact(uri: str, dest: Path, env: Mapping[str, str] | None = None, role: Role = Role.MODEL) -> Path:
    """Download the artifact version at ``uri`` into ``dest`` (a version directory), verified and atomic.

    ArtifactMissing while its metadata.json is not there (a writer still uploading; the server
    waits, as for a volume still mounting); ArtifactError when it is there but wrong (the model's
    size or SHA-256 does not match the metadata, the metadata is not an artifact's) or cannot
    be read (access denied); StorageUnreachable when the store does not answer (worth waiting).
    A ``dest`` already complete from an earlier start of the same pod is used as it is (loading
    checks the model's SHA-256 again).
    """
    dest = Path(dest)
    if (dest / METADATA_FILE).is_file() and (dest / MODEL_FILE).is_file():
        return dest
    base = uri.rstrip("/")
    try:
        raw = _read_bytes(f"{base}/{METADATA_FILE}", role, env)
    except StorageMissing as e:
        raise ArtifactMissing(f"{e}: the version is not complete (yet)") from None
    except StorageUnreachable:
        raise
    except StorageError as e:
        raise ArtifactError(str(e)) from None
    try:
        meta = ArtifactMetadata.model_validate_json(raw)
    except ValueError as e:
        raise ArtifactError(f"{base}/{METADATA_FILE} is not valid artifact metadata: {e}") from None
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(f".{dest.name}.part-{secrets.token_hex(4)}")
    part.mkdir()
    try:
        try:
            download(f"{base}/{MODEL_FILE}", part / MODEL_FILE, role, env)
        except StorageMissing as e:
            raise ArtifactError(f"{e}, though its {METADATA_FILE} is there: the version is incomplete") from None
        except StorageUnreachable:
            raise
        except StorageError as e:
            raise ArtifactError(str(e)) from None
        digest = hashlib.sha256()
        with open(part / MODEL_FILE, "rb") as f:
            for chunk in iter(lambda: f.read(CHUNK_BYTES), b""):
                digest.update(chunk)
        if digest.hexdigest() != meta.model_sha256:
            raise ArtifactError(
                f"{base}/{MODEL_FILE} is corrupted or truncated: sha256 {digest.hexdigest()[:12]}... does not "
                f"match {meta.model_sha256[:12]}... recorded in {METADATA_FILE}")
        (part / METADATA_FILE).write_bytes(raw)
        read_metadata(part)  # the same checks as a volume's version gets
        os.replace(part, dest)
    finally:
        if part.exists():
            shutil.rmtree(part, ignore_errors=True)
    return dest
