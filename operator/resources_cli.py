"""`mlvisor crds` and `mlvisor validate`: the resources as files.

``load_resources`` is the one way a file of TrainingJob/ModelServer documents becomes typed
objects, so `mlvisor validate`, `mlvisor run` and the tests all report the same errors:
every problem, each with the file, the document, the field path (camelCase, as written in
YAML), the value given and what was expected. With scikit-learn importable it also asks the
trainer's pre-flight check (:mod:`mlvisor.trainer.preflight`) about each TrainingJob: the
class, its parameters and their values, grid keys, the scorer, and with ``data_dir`` the
CSV file and its target column.

A resource file is untrusted input with a bounded cost: at most :data:`MAX_FILE_BYTES`;
nesting at most :data:`MAX_DEPTH` deep (checked on the parser's event stream, before any
recursive step); anchors and aliases allowed, but the document as expanded by its aliases
must stay under :data:`MAX_EXPANDED_NODES` nodes, so a "billion laughs" file is refused in
milliseconds instead of being expanded; a key given twice in one mapping is an error (YAML
would silently keep the last one).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from mlvisor.operator import api

Resource = api.TrainingJob | api.ModelServer | api.ModelPipeline

#: Largest resource file read (a TrainingJob spec is at most 128 KiB serialised).
MAX_FILE_BYTES = 1024 * 1024
#: Deepest nesting of mappings and sequences (a spec needs fewer than 10 levels).
MAX_DEPTH = 64
#: Most nodes a document may have once its aliases are expanded (what validation walks).
MAX_EXPANDED_NODES = 200_000

_YamlLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class ResourceError(Exception):
    """One or more documents are not valid resources; str() lists every problem."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


def _path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(document)"


def _expected(err: dict[str, Any]) -> str:
    msg = str(err["msg"])
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    if err["type"] == "string_pattern_mismatch":
        words = api.PATTERN_WORDS.get(str((err.get("ctx") or {}).get("pattern")))
        if words:
            msg = f"expected {words}"
    if err["type"] == "extra_forbidden":
        return "unknown field (check the spelling; fields are camelCase)"
    if err["type"] == "missing":
        return "required field is missing"
    if "input" in err and err["type"] not in ("model_type", "dict_type"):
        got = err["input"]
        if not isinstance(got, (dict, list)):
            msg += f" (got {got!r})"
    return msg


def describe_validation_error(e: ValidationError, prefix: str = "") -> list[str]:
    """One line per problem: '<prefix><field path>: <what was expected>'."""
    lines = []
    for err in e.errors():
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        # Drop pydantic's union/tag segments (e.g. 'int', 'str') that are not field names.
        loc = tuple(p for p in loc if p not in ("int", "str", "float", "bool"))
        lines.append(f"{prefix}{_path(loc)}: {_expected(err)}")
    return lines


def parse_resource(doc: Any, where: str = "") -> Resource:
    """Validate one parsed document; raises ResourceError naming every bad field."""
    prefix = f"{where}: " if where else ""
    if not isinstance(doc, dict):
        raise ResourceError([f"{prefix}expected a mapping with apiVersion, kind, metadata, spec"])
    kind = doc.get("kind")
    if kind not in api.KINDS:
        raise ResourceError(
            [f"{prefix}kind: expected one of {', '.join(api.KINDS)}, got {kind!r}"]
        )
    if doc.get("apiVersion") != api.API_VERSION:
        raise ResourceError(
            [f"{prefix}apiVersion: expected {api.API_VERSION}, got {doc.get('apiVersion')!r}"]
        )
    name = (doc.get("metadata") or {}).get("name", "?") if isinstance(doc.get("metadata"), dict) else "?"
    try:
        return api.KINDS[kind].model_validate(doc)
    except ValidationError as e:
        raise ResourceError(describe_validation_error(e, f"{prefix}{kind} {name}: ")) from None


class _Bounded(Exception):
    """A resource file over one of the bounds; str() says which."""


def _scan_events(text: str, where: str) -> None:
    """Refuse nesting deeper than MAX_DEPTH from the event stream (iterative: no recursion yet)."""
    depth = 0
    for event in yaml.parse(text, Loader=_YamlLoader):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                line = event.start_mark.line + 1 if event.start_mark else "?"
                raise _Bounded(f"{where}: line {line}: nested more than {MAX_DEPTH} levels deep")
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


def _check_node(root: yaml.Node, where: str) -> None:
    """Expanded size within MAX_EXPANDED_NODES, and no key twice in one mapping.

    Each distinct node is visited once; an alias is a second reference to an already composed
    node, so the expanded size (what constructing and validating would walk) is computed with
    memoisation in time linear in the file.
    """
    sizes: dict[int, int] = {}
    order: list[yaml.Node] = []
    stack: list[yaml.Node] = [root]
    seen: set[int] = set()
    while stack:  # every distinct node, children after parents
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        order.append(node)
        if isinstance(node, yaml.MappingNode):
            keys: dict[Any, int] = {}
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode) and key.value != "<<":
                    line = key.start_mark.line + 1
                    if key.value in keys:
                        raise _Bounded(
                            f"{where}: line {line}: key {key.value!r} is given twice in the same mapping "
                            f"(first on line {keys[key.value]}); YAML would silently keep only the last"
                        )
                    keys[key.value] = line
                stack.extend((key, value))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)
    for node in reversed(order):
        if isinstance(node, yaml.MappingNode):
            total = 1 + sum(sizes[id(k)] + sizes[id(v)] for k, v in node.value)
        elif isinstance(node, yaml.SequenceNode):
            total = 1 + sum(sizes[id(v)] for v in node.value)
        else:
            total = 1
        if total > MAX_EXPANDED_NODES:
            raise _Bounded(
                f"{where}: expands to more than {MAX_EXPANDED_NODES} nodes through its anchors and aliases "
                f"(line {node.start_mark.line + 1}); refusing to expand it (a YAML bomb?)"
            )
        sizes[id(node)] = total


def parse_documents(text: str, where: str) -> list[Any]:
    """The YAML documents of ``text`` as Python data, within the bounds above; ResourceError otherwise."""
    try:
        _scan_events(text, where)
        loader = _YamlLoader(text)
        docs = []
        try:
            while loader.check_node():
                node = loader.get_node()
                if node is None:
                    continue
                _check_node(node, where)
                docs.append(loader.construct_document(node))
        finally:
            loader.dispose()
    except _Bounded as e:
        raise ResourceError([str(e)]) from None
    except yaml.YAMLError as e:
        if "maximum nesting depth" in str(e):  # libyaml's own limit can trip before our count does
            mark = getattr(e, "problem_mark", None)
            line = mark.line + 1 if mark is not None else "?"
            raise ResourceError([f"{where}: line {line}: nested more than {MAX_DEPTH} levels deep"]) from None
        raise ResourceError([f"{where}: not valid YAML: {e}"]) from None
    except (ValueError, RecursionError) as e:  # e.g. an integer of more digits than Python converts
        raise ResourceError([f"{where}: not valid YAML: {e}"]) from None
    return [d for d in docs if d is not None]


def read_resource_file(path: Path) -> str:
    """The file's text, refusing files over MAX_FILE_BYTES without reading them whole."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        raise ResourceError([f"{path}: cannot read: {e.strerror or e}"]) from None
    if len(data) > MAX_FILE_BYTES:
        raise ResourceError(
            [f"{path}: larger than {MAX_FILE_BYTES} bytes ({MAX_FILE_BYTES // 1024} KiB); a resource file "
             "holds a few resources: split it, or shrink the grid"]
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ResourceError([f"{path}: not UTF-8 text: {e}"]) from None


def load_resources(path: str | Path, *, check: bool = True, data_dir: Path | None = None) -> list[Resource]:
    """Every document of a YAML file as typed resources; ResourceError lists all problems.

    ``check``: also run the trainer's pre-flight check on each TrainingJob (when scikit-learn
    is importable); ``data_dir``: the folder that holds the volumes (``<data-dir>/volumes/<claim>/``),
    so a CSV dataset's file and target column are checked as `mlvisor run` will see them.
    """
    path = Path(path)
    docs = parse_documents(read_resource_file(path), str(path))
    if not docs:
        raise ResourceError([f"{path}: no documents found"])
    problems: list[str] = []
    resources: list[Resource] = []
    for i, doc in enumerate(docs, start=1):
        where = f"{path} (document {i})" if len(docs) > 1 else str(path)
        try:
            resource = parse_resource(doc, where)
        except ResourceError as e:
            problems.extend(e.problems)
            continue
        resources.append(resource)
        if check and isinstance(resource, api.TrainingJob):
            problems.extend(
                f"{where}: TrainingJob {resource.metadata.name}: {p}" for p in training_problems(resource, data_dir)
            )
    seen: set[tuple[str, str, str]] = set()
    for r in resources:
        key = (r.kind, r.metadata.namespace, r.metadata.name)
        if key in seen:
            problems.append(f"{path}: {r.kind} {r.metadata.namespace}/{r.metadata.name} is defined twice")
        seen.add(key)
    if problems:
        raise ResourceError(problems)
    return resources


def training_problems(job: api.TrainingJob, data_dir: Path | None = None) -> list[str]:
    """The trainer's pre-flight problems of a job; none when scikit-learn is not importable here."""
    try:
        from mlvisor.trainer.preflight import spec_problems
    except ImportError:
        return []
    csv_root = None
    csv = job.spec.dataset.csv
    if data_dir is not None and csv is not None:
        claim = csv.volume_claim or job.spec.output.volume_claim or "mlvisor-models"
        csv_root = Path(data_dir) / "volumes" / claim
    return spec_problems(job.spec, csv_root)


def _cmd_crds(args: argparse.Namespace) -> int:
    from mlvisor.operator import crdgen

    if args.output:
        for path in crdgen.write_all(Path(args.output)):
            print(f"wrote {path}")
    else:
        sys.stdout.write("---\n".join(crdgen.render(kind) for kind in api.KINDS))
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    failed = False
    data_dir = args.data_dir.expanduser().resolve() if args.data_dir is not None else None
    for file in args.files:
        try:
            resources = load_resources(file, data_dir=data_dir)
        except ResourceError as e:
            failed = True
            for line in e.problems:
                print(line, file=sys.stderr)
            continue
        for r in resources:
            print(f"{file}: {r.kind} {r.metadata.namespace}/{r.metadata.name} is valid")
    return 1 if failed else 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("crds", help="print the CustomResourceDefinitions, or write them to a folder")
    p.add_argument("--output", "-o", metavar="DIR", help="write one YAML file per CRD into DIR")
    p.set_defaults(func=_cmd_crds)

    v = sub.add_parser(
        "validate",
        help="check TrainingJob/ModelServer/ModelPipeline files; exit 1 naming every bad field",
        description=(
            "Check resource files as the API server and the operator would: the schema, then (with "
            "scikit-learn installed) the estimator class, its parameters and values, grid keys and the "
            "scorer. With --data-dir, CSV datasets are looked for where `mlvisor run --data-dir` puts "
            "volumes (<dir>/volumes/<claim>/). Every problem is listed; exit 1 if there is any."
        ),
    )
    v.add_argument("files", nargs="+", metavar="FILE")
    v.add_argument("--data-dir", type=Path, default=None, metavar="DIR",
                   help="also check CSV datasets and their target column under DIR/volumes/<claim>/")
    v.set_defaults(func=_cmd_validate)
