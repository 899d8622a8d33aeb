"""The model artifact: one directory per version, written atomically, loaded without unpickling.

Layout (the contract between trainer, server and operator)::

    <root>/<version>/model.skops       the estimator in skops' secure format
    <root>/<version>/metadata.json     ArtifactMetadata (below)
    <root>/<version>/trials.jsonl      a search's every trial, one JSON record a line
                                       (named in metadata.search.trials_file)

A version directory appears only by an atomic rename of a complete temporary directory
(``.<version>.tmp-*``, both files fsync'ed first), so a crash never leaves a version that
looks complete: readers see the whole version or none of it (tested by killing writers at
every step). Leftover temporary directories of killed writers are invisible to readers
(dot names) and removed by a later write once they are stale. A full disk is reported as
:class:`ArtifactWriteError` naming the file and the volume, never as a bare errno. The
metadata records the SHA-256 of model.skops: a truncated or corrupted file is refused
with a clear ArtifactError, and loading uses skops with trusted types derived from the
estimator allowlist, never pickle.
"""

from __future__ import annotations

import datetime as dt
import errno
import hashlib
import json
import os
import platform
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mlvisor.trainer.allowlist import is_trusted_type

MODEL_FILE = "model.skops"
METADATA_FILE = "metadata.json"
FORMAT_VERSION = 1


class ArtifactError(Exception):
    """The artifact is missing, incomplete, corrupted or contains untrusted types."""


class ArtifactWriteError(OSError):
    """Writing the artifact failed (a full disk, a read-only volume); the message names the file."""

    def __str__(self) -> str:
        return self.strerror or super().__str__()


#: A temporary version directory untouched for this long belongs to a writer that died.
STALE_TMP_SECONDS = 600.0


def write_failure(e: OSError, path: Path, what: str) -> ArtifactWriteError:
    """An OSError while writing ``path``, in words: which file, why, and what to do."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        why = "no space left on the device" if e.errno == errno.ENOSPC else "the disk quota is exceeded"
        advice = "free space on that volume or give it more (e.g. a bigger PVC), then the restart succeeds"
    elif e.errno == errno.EROFS:
        why, advice = "the file system is read-only", "mount the output volume read-write"
    else:
        why, advice = (e.strerror or str(e)), "check the output volume"
    return ArtifactWriteError(e.errno or 0, f"cannot write {what} {path}: {why}; {advice}")


class ArtifactMissing(ArtifactError):
    """The version directory or its metadata.json is not there (yet): a volume may still be mounting.

    Every other ArtifactError is final: a version appears complete by one atomic rename, so a
    version that is there but does not load never will.
    """


class TensorSpec(BaseModel):
    """V2 tensor metadata: name, datatype, shape (-1 for the batch dimension)."""

    model_config = ConfigDict(extra="forbid")
    name: str
    datatype: str
    shape: list[int]


class ColumnSpec(BaseModel):
    """One input column of a model trained on a table: what a client sends by name (V2: one
    input per column, named as the column)."""

    model_config = ConfigDict(extra="forbid")
    name: str
    datatype: Literal["FP64", "INT64", "BYTES"]
    """FP64 for numbers (NaN for a missing value), INT64 for integers, BYTES for strings (a
    missing string is NaN in the object column, as pandas' read_csv leaves it)."""
    categorical: bool = False
    """Encoded by the model's own preprocessing (one-hot or ordinal); any string is accepted,
    unknown categories included."""
    missing: bool = False
    """The training data had missing values in this column; a request may send null (JSON) or NaN."""


class DatasetInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")
    source: Literal["builtin", "csv", "uri"]
    name: str
    """Builtin dataset name, CSV path (spec.dataset.csv) or URI (spec.dataset.uri)."""
    rows: int
    target: str
    description: str = ""
    """Builtin datasets: the title of their description; tables: what was read (rows, categorical
    columns and their encoding, columns with missing values)."""


class ArtifactMetadata(BaseModel):
    """metadata.json: everything the server and the operator need to know without loading the model."""

    model_config = ConfigDict(extra="forbid")

    format_version: int = FORMAT_VERSION
    name: str
    """Model name (the TrainingJob's name)."""
    version: str
    created: dt.datetime
    estimator: str
    """Dotted class path, e.g. sklearn.ensemble.RandomForestClassifier."""
    task: Literal["classification", "regression"]
    python_version: str = Field(default_factory=platform.python_version)
    sklearn_version: str
    numpy_version: str
    skops_version: str
    feature_names: list[str]
    n_features: int
    classes: list[Any] | None = None
    columns: list[ColumnSpec] | None = None
    """Present when the model takes a table: a pandas DataFrame with these columns in this
    order (float64 with NaN for FP64, int64 for INT64, object holding str for BYTES); its
    preprocessing (one scikit-learn Pipeline with a ColumnTransformer) is part of the model.
    Absent for models that take one [N, n_features] FP64 array (all-numeric data without
    missing values, and every artifact written before columns existed)."""
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    metrics: dict[str, float]
    score_name: str
    """The headline metric: spec.search.scoring when a search set it, else accuracy for classifiers, r2 for regressors."""
    params: dict[str, Any]
    best_params: dict[str, Any] | None = None
    search: dict[str, Any] | None = None
    """For searches: method, grid or distributions, cv, scoring, the number of trials, the best
    trial and its cv score, and trials_file (every trial's record, beside the model)."""
    dataset: DatasetInfo
    model_sha256: str


@dataclass(frozen=True)
class LoadedArtifact:
    path: Path
    metadata: ArtifactMetadata
    model: Any


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_artifact(root: Path, model_bytes: bytes, metadata: ArtifactMetadata,
                   extra_files: dict[str, bytes] | None = None) -> Path:
    """Write ``<root>/<metadata.version>/`` atomically; returns the version directory.

    ``model_bytes`` is the skops serialisation (``skops.io.dumps``); ``extra_files`` are
    written beside it (a search's trials.jsonl), inside the same atomic rename. Re-writing a
    version that already exists completely is a no-op (a restarted select step is idempotent).
    """
    root = Path(root)
    final = root / metadata.version
    if (final / METADATA_FILE).is_file():
        return final
    try:
        root.mkdir(parents=True, exist_ok=True)
        remove_stale_tmp(root)
        tmp = Path(tempfile.mkdtemp(prefix=f".{metadata.version}.tmp-", dir=root))
    except OSError as e:
        raise write_failure(e, root, "the artifact directory") from e
    try:
        _write_synced(tmp / MODEL_FILE, model_bytes)
        for name, data in (extra_files or {}).items():
            if name in (MODEL_FILE, METADATA_FILE) or "/" in name or name.startswith("."):
                raise ValueError(f"extra artifact file name {name!r} is not allowed")
            _write_synced(tmp / name, data)
        meta = metadata.model_copy(update={"model_sha256": hashlib.sha256(model_bytes).hexdigest()})
        _write_synced(tmp / METADATA_FILE, meta.model_dump_json(indent=2).encode())
        os.chmod(tmp, 0o755)
        try:
            os.rename(tmp, final)
        except OSError:
            if (final / METADATA_FILE).is_file():  # another writer finished the same version first
                shutil.rmtree(tmp, ignore_errors=True)
                return final
            raise
        _fsync_dir(root)
        return final
    except ArtifactWriteError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise write_failure(e, final, "the artifact") from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write_synced(path: Path, data: bytes) -> None:
    """Write and fsync one file; a failure names it."""
    try:
        with open(path, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise write_failure(e, path, f"{len(data)} bytes to") from e


def remove_stale_tmp(root: Path, now: float | None = None) -> list[Path]:
    """Remove temporary version directories of writers that died (untouched for STALE_TMP_SECONDS)."""
    import time

    now = time.time() if now is None else now
    removed = []
    for child in Path(root).glob(".*.tmp-*"):
        try:
            if child.is_dir() and now - child.stat().st_mtime > STALE_TMP_SECONDS:
                shutil.rmtree(child, ignore_errors=True)
                removed.append(child)
        except OSError:
            continue
    return removed


def read_metadata(path: Path) -> ArtifactMetadata:
    """Read and check metadata.json of an artifact directory (no model loading)."""
    path = Path(path)
    meta_path = path / METADATA_FILE
    if not path.is_dir():
        raise ArtifactMissing(f"artifact directory {path} does not exist")
    if not meta_path.is_file():
        raise ArtifactMissing(f"{meta_path} is missing: {path} is not a complete artifact")
    try:
        raw = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArtifactError(f"{meta_path} is not valid JSON: {e}") from e
    try:
        meta = ArtifactMetadata.model_validate(raw)
    except ValidationError as e:
        raise ArtifactError(f"{meta_path} is not valid artifact metadata: {e}") from e
    if meta.format_version != FORMAT_VERSION:
        raise ArtifactError(
            f"{meta_path} has format_version {meta.format_version}; this mlvisor reads {FORMAT_VERSION}"
        )
    return meta


def load_artifact(path: Path) -> LoadedArtifact:
    """Load an artifact securely: checksum first, then skops with allowlist-derived trusted types."""
    import skops.io as sio  # deferred: the operator reads metadata without importing sklearn

    path = Path(path)
    meta = read_metadata(path)
    model_path = path / MODEL_FILE
    if not model_path.is_file():
        raise ArtifactError(f"{model_path} is missing")
    actual = sha256_of(model_path)
    if actual != meta.model_sha256:
        raise ArtifactError(
            f"{model_path} is corrupted or truncated: sha256 {actual[:12]}... does not match "
            f"{meta.model_sha256[:12]}... recorded in {METADATA_FILE}"
        )
    try:
        untrusted = sio.get_untrusted_types(file=model_path)
    except Exception as e:  # skops raises assorted errors on malformed archives
        raise ArtifactError(f"{model_path} is not a valid skops file: {e}") from e
    # skops trusts every sklearn estimator by default, so untrusted types alone would let a file
    # instantiate, say, sklearn.cluster.KMeans: check every sklearn type the file names as well.
    named = {t for t in sklearn_types_in(model_path) if not is_trusted_type(t)}
    refused = sorted(named | {t for t in untrusted if not is_trusted_type(t)})
    if refused:
        raise ArtifactError(
            f"{model_path} contains types outside the estimator allowlist, refusing to load: " + ", ".join(refused)
        )
    try:
        model = sio.load(model_path, trusted=list(untrusted))
    except Exception as e:
        raise ArtifactError(f"{model_path} could not be loaded: {e}") from e
    return LoadedArtifact(path=path, metadata=meta, model=model)


def sklearn_types_in(model_path: Path) -> set[str]:
    """Dotted names of every sklearn type a skops file's schema refers to (read, not loaded)."""
    try:
        with zipfile.ZipFile(model_path) as archive:
            schema = json.loads(archive.read("schema.json"))
    except (OSError, KeyError, zipfile.BadZipFile, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArtifactError(f"{model_path} is not a valid skops file: {e}") from e
    found: set[str] = set()
    stack: list[Any] = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            module, cls = node.get("__module__"), node.get("__class__")
            if isinstance(module, str) and isinstance(cls, str) and module.split(".")[0] == "sklearn":
                found.add(f"{module}.{cls}")
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return found


def list_versions(root: Path) -> list[str]:
    """Complete versions under ``root``, oldest first by creation time in their metadata."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        if child.name.startswith(".") or not child.is_dir():
            continue
        try:
            found.append((read_metadata(child).created, child.name))
        except ArtifactError:
            continue
    return [name for _, name in sorted(found)]
