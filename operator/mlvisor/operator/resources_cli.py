"""`mlvisor crds` and `mlvisor validate`: the resources as files.

:func:`load_paths` is the one way files become typed resources, so `mlvisor validate`,
`mlvisor run` and the tests all say the same: every problem of every document at once, each
with the file, the document, the field path (camelCase, as written in YAML), the value given
and what was expected, whichever layer finds it: the YAML reader, the schema and its
cross-field rules, and, with scikit-learn importable, the trainer's own judge
(:func:`mlvisor.trainer.preflight.judge`: the estimator, its parameters and values, grid
keys, the scorer, and the data: builtin datasets always, CSV files with ``data_dir``), which
the trainer runs before fitting and the operator before creating pods, so the words are the
trainer's. A document whose schema is wrong somewhere is still judged on its valid parts.

What it reads: files (any name), folders (every ``*.yaml``, ``*.yml`` and ``*.json`` inside,
recursively, in sorted order; hidden folders skipped) and kustomize trees (a folder with a
``kustomization.yaml``: see :func:`_kustomization`). Documents of kinds mlvisor does not own
(a Namespace, a PVC, RBAC, a CRD, a HorizontalPodAutoscaler, ...) are skipped with a note.

Reading (within bounds: :mod:`mlvisor.api.documents`) and the words of schema problems
(:mod:`mlvisor.api.problems`) are the kernel's, shared with the operator and the trainer.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlvisor import api
from mlvisor.api.documents import (
    Resource,
    foreign_kind,
    parse_documents,
    parse_resource,
    read_documents,
    read_resource_file,
)
from mlvisor.api.problems import ResourceError
from mlvisor.operator.plan import OperatorConfig

#: What a folder's files must end with to be read (kubectl apply -f DIR reads the same).
RESOURCE_SUFFIXES = (".yaml", ".yml", ".json")
#: The names kustomize looks for, in its order.
KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
#: Keys of a kustomization that only list what to include: such a tree is read file by file.
_LISTING_KEYS = frozenset({"apiVersion", "kind", "metadata", "resources"})
KUSTOMIZE_TIMEOUT_SECONDS = 60


@dataclass(frozen=True)
class Found:
    source: str
    """The file it was read from (or ``DIR (kubectl kustomize)``)."""
    resource: Resource
    valid: bool = True
    """False when the trainer's judge found problems with it (they are in :attr:`Loaded.problems`)."""
    data: str | None = None
    """A TrainingJob's table as the trainer reads it (rows, categorical columns and their encoding,
    missing values), when it was read here."""


@dataclass
class Loaded:
    """Everything read from some paths: resources, notes about skipped documents, and problems."""

    found: list[Found] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    secrets: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict, repr=False)
    """The Secrets in the files, (namespace, name) -> their decoded data: `mlvisor run` gives a
    pod the keys its env names (secretKeyRef). Never printed."""
    secret_sources: dict[tuple[str, str], str] = field(default_factory=dict)
    """Where each Secret was read (its file and document)."""

    @property
    def resources(self) -> list[Resource]:
        return [f.resource for f in self.found]


@dataclass(frozen=True)
class _Source:
    where: str
    path: Path | None = None
    text: str | None = None
    """Already read (kubectl kustomize's output); else the file at ``path`` is read."""


def load_paths(paths: Iterable[str | Path], *, check: bool = True, data_dir: Path | None = None) -> Loaded:
    """Every resource in ``paths`` (files, folders, kustomize trees), every problem listed.

    ``check``: also judge each TrainingJob (and each ModelPipeline's spec.training) as the
    trainer will, when scikit-learn is importable; ``data_dir``: the folder that holds the
    volumes (``<data-dir>/volumes/<claim>/``), so a TrainingJob's CSV file is judged as
    `mlvisor run` will see it.
    """
    loaded = Loaded()
    sources: list[_Source] = []
    for path in paths:
        sources += _expand(Path(path), loaded)
    for source in sources:
        _load_source(source, loaded, check, data_dir)
    _check_secrets(loaded)
    seen: dict[tuple[str, str, str], str] = {}
    for f in loaded.found:
        r = f.resource
        key = (r.kind, r.metadata.namespace, r.metadata.name)
        if key in seen:
            again = "" if seen[key] == f.source else f" (also in {seen[key]})"
            loaded.problems.append(
                f"{f.source}: {r.kind} {r.metadata.namespace}/{r.metadata.name} is defined twice{again}"
            )
        seen.setdefault(key, f.source)
    return loaded


def load_resources(
    path: str | Path, *, check: bool = True, data_dir: Path | None = None, notes: list[str] | None = None
) -> list[Resource]:
    """The resources of one path (:func:`load_paths`); ResourceError lists every problem.

    ``notes``: gets the notes (what kubectl would do silently that the writer may not expect,
    documents of other kinds skipped).
    """
    loaded = load_paths([path], check=check, data_dir=data_dir)
    if notes is not None:
        notes.extend(loaded.notes)
    if loaded.problems:
        raise ResourceError(loaded.problems)
    return loaded.resources


def source_files(paths: Iterable[str | Path]) -> list[Path]:
    """Every file (and folder) under ``paths`` whose change could change what they hold (`mlvisor run` watches them)."""
    out: list[Path] = []
    for path in map(Path, paths):
        out.append(path)
        if path.is_dir():
            out += sorted(
                p for p in path.rglob("*") if not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
    return out


def _expand(path: Path, loaded: Loaded) -> list[_Source]:
    if path.is_dir():
        if _kustomization_file(path) is not None:
            return _kustomize_tree(path, loaded)
        found = _folder(path, loaded, set())
        if not found:
            loaded.problems.append(f"{path}: no {', '.join('*' + s for s in RESOURCE_SUFFIXES)} file in this folder")
        return found
    if not path.exists():
        loaded.problems.append(f"{path}: no such file or folder")
        return []
    return [_Source(str(path), path)]


def _kustomize_tree(folder: Path, loaded: Loaded) -> list[_Source]:
    """A kustomize tree; a note names the resource files under it that its kustomization does not list."""
    found = _kustomization(folder, loaded.problems, frozenset())
    listed = {s.path.resolve() for s in found if s.path is not None}
    if any(s.path is None for s in found):
        return found  # rendered by kubectl kustomize: which file went where is kubectl's business
    others = [
        s.path
        for s in _folder(folder, Loaded(), set())
        if s.path is not None and s.path.resolve() not in listed and s.path.name not in KUSTOMIZATION_FILES
    ]
    kustomization = _kustomization_file(folder)
    if others and kustomization is not None:
        shown = ", ".join(str(p.relative_to(folder)) for p in others[:5]) + (", ..." if len(others) > 5 else "")
        loaded.notes.append(
            f"{folder}: a kustomize tree: read what {kustomization.name} lists; {len(others)} "
            f"other file(s) under it are not part of it and were not read ({shown}): name them to check them"
        )
    return found


def _folder(path: Path, loaded: Loaded, visited: set[Path]) -> list[_Source]:
    """Every resource file under ``path``, sorted; a subfolder with a kustomization is a kustomize tree."""
    out: list[_Source] = []
    if path.resolve() in visited:  # a symbolic link back up the tree
        return out
    visited.add(path.resolve())
    for entry in sorted(path.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            if _kustomization_file(entry) is not None:
                out += _kustomize_tree(entry, loaded)
            else:
                out += _folder(entry, loaded, visited)
        elif entry.suffix in RESOURCE_SUFFIXES and entry.is_file():
            out.append(_Source(str(entry), entry))
    return out


def _kustomization_file(folder: Path) -> Path | None:
    return next((folder / n for n in KUSTOMIZATION_FILES if (folder / n).is_file()), None)


def _is_remote(entry: str) -> bool:
    return "://" in entry or entry.startswith(("github.com/", "git@")) or "?ref=" in entry


def _kustomization(folder: Path, problems: list[str], visiting: frozenset[Path]) -> list[_Source]:
    """The documents of a kustomize tree.

    A kustomization that only lists ``resources:`` (files, and folders that are kustomize trees
    themselves), as every one in this project's manifests/ does, is read here, entry by entry:
    kustomize's output is then exactly those documents, and each problem names its own file
    and line, which kustomize's merged output cannot. A kustomization that transforms what it
    lists (``namespace``, ``namePrefix``, ``patches``, ``images``, generators, components,
    remote resources, ...) is rendered by ``kubectl kustomize`` when kubectl is on PATH (its
    output is what ``kubectl apply -k`` sends); without kubectl it is a problem that says so.
    """
    kfile = _kustomization_file(folder)
    assert kfile is not None
    if folder.resolve() in visiting:
        problems.append(f"{kfile}: includes itself through its resources")
        return []
    try:
        docs = parse_documents(read_resource_file(kfile), str(kfile))
    except ResourceError as e:
        problems.extend(e.problems)
        return []
    doc = docs[0] if len(docs) == 1 else None
    if not isinstance(doc, dict):
        problems.append(f"{kfile}: expected one mapping (a Kustomization)")
        return []
    entries = doc.get("resources") or []
    if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
        problems.append(f"{kfile}: resources: expected a list of paths")
        return []
    transforms = sorted(set(doc) - _LISTING_KEYS)
    remote = [e for e in entries if _is_remote(e)]
    if transforms or remote:
        return _kubectl_kustomize(folder, kfile, transforms + [f"remote resource {r}" for r in remote], problems)
    out: list[_Source] = []
    for entry in entries:
        target = folder / entry
        if target.is_dir():
            if _kustomization_file(target) is None:
                problems.append(f"{kfile}: resources: {entry!r} is a folder without a kustomization.yaml")
            else:
                out += _kustomization(target, problems, visiting | {folder.resolve()})
        elif target.is_file():
            if not target.resolve().is_relative_to(folder.resolve()):
                problems.append(
                    f"{kfile}: resources: {entry!r} is not in or below {folder}; kustomize takes files only "
                    "from the kustomization's own folder (a folder with its own kustomization may be elsewhere)"
                )
                continue
            out.append(_Source(str(target), target))
        else:
            problems.append(f"{kfile}: resources: {entry!r} does not exist")
    return out


def _kubectl_kustomize(folder: Path, kfile: Path, why: list[str], problems: list[str]) -> list[_Source]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        problems.append(
            f"{kfile}: uses {', '.join(why)}, which mlvisor does not apply itself; it asks `kubectl kustomize` "
            f"when kubectl is on PATH: install kubectl, or check the output: kubectl kustomize {folder} > "
            "all.yaml && mlvisor validate all.yaml"
        )
        return []
    where = f"{folder} (kubectl kustomize)"
    try:
        done = subprocess.run(
            [kubectl, "kustomize", str(folder)],
            capture_output=True,
            text=True,
            timeout=KUSTOMIZE_TIMEOUT_SECONDS,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        problems.append(f"{where}: {e}")
        return []
    if done.returncode != 0:
        problems.append(f"{where}: {done.stderr.strip() or f'exit {done.returncode}'}")
        return []
    return [_Source(where, text=done.stdout)]


def _load_source(source: _Source, loaded: Loaded, check: bool, data_dir: Path | None) -> None:
    try:
        text = source.text if source.text is not None else read_resource_file(source.path or Path(source.where))
        reading = read_documents(text, source.where)
    except ResourceError as e:
        loaded.problems.extend(e.problems)
        return
    loaded.notes.extend(reading.notes)
    docs = reading.documents
    if not docs and source.text is None:
        loaded.problems.append(f"{source.where}: no documents found")
        return
    for i, doc in enumerate(docs, start=1):
        where = f"{source.where} (document {i})" if len(docs) > 1 else source.where
        if _is_secret(doc.value):
            _read_secret(doc.value, where, loaded)
            continue
        note = foreign_kind(doc.value)
        if note is not None:
            loaded.notes.append(f"{where}: {note}")
            continue
        try:
            resource = parse_resource(doc.value, where, doc.booleans)
        except ResourceError as e:
            loaded.problems.extend(e.problems)
            if check:
                loaded.problems.extend(_salvaged_problems(doc.value, where, data_dir))
            continue
        judged, summary = training_judgement(resource, data_dir) if check else ([], None)
        loaded.found.append(Found(source.where, resource, valid=not judged, data=summary))
        loaded.problems.extend(f"{where}: {resource.kind} {resource.metadata.name}: {p}" for p in judged)


def _is_secret(doc: Any) -> bool:
    return isinstance(doc, dict) and doc.get("kind") == "Secret" and doc.get("apiVersion") == "v1"


def _read_secret(doc: dict[str, Any], where: str, loaded: Loaded) -> None:
    """A v1 Secret: ``data`` (base64) and ``stringData`` (which wins, as the API server merges them).
    Problems name the key, never a value."""
    import base64
    import binascii

    raw_meta = doc.get("metadata")
    meta: dict[str, Any] = raw_meta if isinstance(raw_meta, dict) else {}
    name, namespace = meta.get("name"), meta.get("namespace") or "default"
    if not isinstance(name, str) or not name:
        loaded.problems.append(f"{where}: Secret: metadata.name is missing")
        return
    values: dict[str, str] = {}
    data, string_data = doc.get("data") or {}, doc.get("stringData") or {}
    if not isinstance(data, dict) or not isinstance(string_data, dict):
        loaded.problems.append(f"{where}: Secret {name}: data and stringData must be mappings of key to value")
        return
    for key, value in data.items():
        try:
            values[str(key)] = base64.b64decode(str(value), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            loaded.problems.append(f"{where}: Secret {name}: data.{key} is not base64 of UTF-8 text "
                                   "(write the text under stringData instead)")
    for key, value in string_data.items():
        values[str(key)] = str(value)
    loaded.secrets[(namespace, name)] = values
    loaded.secret_sources[(namespace, name)] = where


def credentials_named(resource: Resource) -> list[tuple[str, api.Credentials]]:
    """(field, credentials) of every Secret a resource names."""
    named: list[tuple[str, api.Credentials | None]] = []
    if isinstance(resource, api.TrainingJob | api.ModelPipeline):
        spec = resource.spec if isinstance(resource, api.TrainingJob) else resource.spec.training
        prefix = "spec." if isinstance(resource, api.TrainingJob) else "spec.training."
        named += [(f"{prefix}dataset.credentials", spec.dataset.credentials),
                  (f"{prefix}output.credentials", spec.output.credentials)]
    elif isinstance(resource, api.ModelServer):
        named.append(("spec.model.credentials", resource.spec.model.credentials))
    return [(f, c) for f, c in named if c is not None]


def _check_secrets(loaded: Loaded) -> None:
    """A Secret named by a resource is used: its keys are checked (a missing access key is what a
    kubelet would refuse the pod for); one the files lack is looked for on the cluster, and
    `mlvisor run` uses its own AWS_* variables instead (a note says so). A Secret no resource
    names is skipped with a note."""
    used: set[tuple[str, str]] = set()
    for i, f in enumerate(list(loaded.found)):
        r = f.resource
        for where, creds in credentials_named(r):
            key = (r.metadata.namespace, creds.secret_name)
            used.add(key)
            found = loaded.secrets.get(key)
            head = f"{f.source}: {r.kind} {r.metadata.name}: {where}"
            if found is None:
                loaded.notes.append(
                    f"{head} names Secret {creds.secret_name}, which is not in these files: on a cluster it must "
                    f"exist in namespace {r.metadata.namespace}; mlvisor run gives the pods its own AWS_* "
                    "environment variables instead")
                continue
            lacking = [k for k in api.REQUIRED_CREDENTIAL_KEYS if not found.get(k)]
            if lacking:
                loaded.found[i] = dataclasses.replace(loaded.found[i], valid=False)
                loaded.problems.append(
                    f"{head}: Secret {creds.secret_name} ({loaded.secret_sources[key]}) has no {' and no '.join(lacking)}; "
                    f"it needs {', '.join(api.REQUIRED_CREDENTIAL_KEYS)} and may have "
                    + ", ".join(k for k in api.CREDENTIAL_KEYS if k not in api.REQUIRED_CREDENTIAL_KEYS))
    for key, where in loaded.secret_sources.items():
        if key not in used:
            loaded.notes.append(f"{where}: Secret {key[1]} is not named by any resource here: skipped")


def training_problems(resource: Resource, data_dir: Path | None = None) -> list[str]:
    """:func:`training_judgement`'s problems."""
    return training_judgement(resource, data_dir)[0]


def training_judgement(resource: Resource, data_dir: Path | None = None) -> tuple[list[str], str | None]:
    """(problems, what was read of the data) of a TrainingJob or a ModelPipeline's spec.training.

    What the operator and the trainer will refuse in a TrainingJob, or in a ModelPipeline's
    spec.training, in their words and order: the operator's own limits (grid size, spec size, a
    pipeline's name), then the trainer's judge.

    A TrainingJob's CSV file is read when ``data_dir`` is given (the volumes are under
    ``<data-dir>/volumes/<claim>/``); a pipeline's never: its data is read at each run, and a
    file missing now is a reason to retry a run later, not an invalid spec. The judge is
    skipped when scikit-learn is not importable here.
    """
    from mlvisor.operator.planners.pipeline import check_pipeline_spec
    from mlvisor.operator.planners.training import check_training_spec

    judged: api.TrainingJobSpec
    if isinstance(resource, api.ModelPipeline):
        problems = check_pipeline_spec(resource, OperatorConfig())
        judged = resource.spec.training
    elif isinstance(resource, api.TrainingJob):
        problems = check_training_spec(resource, OperatorConfig())
        judged = resource.spec
    else:
        return [], None
    try:
        from mlvisor.trainer.preflight import judge, spec_problems
    except ImportError:
        return problems, None
    if isinstance(resource, api.ModelPipeline):
        return problems + [in_pipeline(p) for p in spec_problems(judged)], None
    verdict = judge(judged, _csv_root(resource.spec, data_dir))
    return problems + verdict.problems, verdict.summary if judged.dataset.builtin is None else None


#: The claim of a dataset that names none, as the operator and `mlvisor run` mount it.
_DEFAULT_CLAIM = OperatorConfig().models_claim


def _csv_root(spec: api.TrainingJobSpec, data_dir: Path | None) -> Path | None:
    """Where `mlvisor run --data-dir` puts the volume of a table: ``<data-dir>/volumes/<claim>/``."""
    return _table_root(spec.dataset, spec.output.volume_claim, data_dir)


def _table_root(dataset: api.Dataset, output_claim: str | None, data_dir: Path | None) -> Path | None:
    """The folder a dataset's table is read under, as `mlvisor run --data-dir` plays its volume:
    ``<data-dir>/volumes/<claim>/`` for ``csv`` and ``pvc://``; any folder for ``file://`` (an
    absolute path); None (not read here) without ``data_dir``, and for ``s3://`` and ``https://``,
    which the trainer reads with the credentials it gets (its words are the same)."""
    if data_dir is None:
        return None
    if dataset.csv is not None:
        return Path(data_dir) / "volumes" / (dataset.csv.volume_claim or output_claim or _DEFAULT_CLAIM)
    uri = dataset.uri or ""
    if uri.startswith("pvc://"):
        return Path(data_dir) / "volumes" / uri[len("pvc://"):].split("/", 1)[0]
    if uri.startswith("file://"):
        return Path(data_dir)
    return None


def _salvaged_problems(doc: Any, where: str, data_dir: Path | None) -> list[str]:
    """The judge's problems of a TrainingJob (or pipeline) document whose schema is wrong elsewhere:
    the parts that are valid on their own are judged (:class:`SpecParts`), the CSV file too when
    the fields that say where it is are valid (never a pipeline's, as in :func:`training_problems`)."""
    if not isinstance(doc, dict) or not isinstance(doc.get("spec"), dict):
        return []
    kind, spec = doc.get("kind"), doc["spec"]
    rename: Callable[[str], str]
    if kind == "ModelPipeline":
        spec, rename, data_dir = spec.get("training"), in_pipeline, None
    elif kind == "TrainingJob":
        rename = str
    else:
        return []
    try:
        from mlvisor.trainer.preflight import SpecParts, spec_problems
    except ImportError:
        return []
    parts = SpecParts.salvage(spec)
    csv_root = None
    if parts.dataset is not None and data_dir is not None:
        try:
            output: api.OutputSpec | None = api.OutputSpec.model_validate(spec.get("output") or {})
        except ValueError:
            output = None
        if output is not None or parts.dataset.csv is None or parts.dataset.csv.volume_claim:
            csv_root = _table_root(parts.dataset, output.volume_claim if output else None, data_dir)
    meta = doc.get("metadata")
    name = meta.get("name", "?") if isinstance(meta, dict) else "?"
    return [f"{where}: {kind} {name}: {rename(p)}" for p in spec_problems(parts, csv_root)]


_TRAINING_FIELD = re.compile(r"\bspec\.(?=(dataset|estimator|search|workers|testSize|randomState|output|image)\b)")


def in_pipeline(problem: str) -> str:
    """A TrainingJob spec's problem as it reads in a ModelPipeline: its fields are under spec.training."""
    return _TRAINING_FIELD.sub("spec.training.", problem)


def _cmd_crds(args: argparse.Namespace) -> int:
    from mlvisor.operator import crdgen

    if args.output:
        for path in crdgen.write_all(Path(args.output)):
            print(f"wrote {path}")
    else:
        sys.stdout.write("---\n".join(crdgen.render(kind) for kind in api.KINDS))
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    data_dir = args.data_dir.expanduser().resolve() if args.data_dir is not None else None
    loaded = load_paths(args.files, data_dir=data_dir)
    for f in loaded.found:
        r = f.resource
        if f.valid:
            print(f"{f.source}: {r.kind} {r.metadata.namespace}/{r.metadata.name} is valid")
        if f.data:
            print(f"{f.source}: {r.kind} {r.metadata.namespace}/{r.metadata.name}: the data: {f.data}")
    for note in loaded.notes:
        print(f"note: {note}", file=sys.stderr)
    for line in loaded.problems:
        print(line, file=sys.stderr)
    return 1 if loaded.problems else 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("crds", help="print the CustomResourceDefinitions, or write them to a folder")
    p.add_argument("--output", "-o", metavar="DIR", help="write one YAML file per CRD into DIR")
    p.set_defaults(func=_cmd_crds)

    v = sub.add_parser(
        "validate",
        help="check TrainingJob/ModelServer/ModelPipeline files as the trainer and the operator will; exit 1 naming every problem",
        description=(
            "Check resource files, folders (every *.yaml, *.yml, *.json inside, recursively) and kustomize trees "
            "as the API server, the operator and the trainer will: the schema and its cross-field rules, then "
            "(with scikit-learn installed) everything the trainer checks before fitting: the estimator class, "
            "its parameters and values, grid keys and the scorer, and the data: builtin datasets always (a "
            "classifier on diabetes is refused), tables (spec.dataset.csv, pvc:// and file:// uris) with --data-dir, "
            "looked for where `mlvisor run --data-dir` puts volumes (<dir>/volumes/<claim>/): the file, its columns "
            "(which are categorical, which have missing values: printed for a table that was read) and cells, the "
            "target's fitness for the task, class_weight keys; s3:// and https:// datasets are read by the trainer. "
            "A Secret named by a resource's credentials is checked for its keys (never printed). Documents of other "
            "kinds (Namespace, RBAC, HorizontalPodAutoscaler, ...) are skipped with a note. Every problem is listed; "
            "exit 1 if there is any."
        ),
    )
    v.add_argument("files", nargs="+", metavar="PATH", help="a file, a folder or a kustomize tree")
    v.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="also check CSV datasets (file, columns, cells, target) under DIR/volumes/<claim>/",
    )
    v.set_defaults(func=_cmd_validate)
