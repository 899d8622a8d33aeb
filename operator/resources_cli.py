"""`mlvisor crds` and `mlvisor validate`: the resources as files.

``load_resources`` is the one way a file of TrainingJob/ModelServer documents becomes typed
objects, so `mlvisor validate`, `mlvisor run` and the tests all report the same errors:
every problem, each with the file, the document, the field path (camelCase, as written in
YAML) and what was expected.
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


def load_resources(path: str | Path) -> list[Resource]:
    """Every document of a YAML file as typed resources; ResourceError lists all problems."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ResourceError([f"{path}: cannot read: {e.strerror or e}"]) from None
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as e:
        raise ResourceError([f"{path}: not valid YAML: {e}"]) from None
    if not docs:
        raise ResourceError([f"{path}: no documents found"])
    problems: list[str] = []
    resources: list[Resource] = []
    for i, doc in enumerate(docs, start=1):
        where = f"{path} (document {i})" if len(docs) > 1 else str(path)
        try:
            resources.append(parse_resource(doc, where))
        except ResourceError as e:
            problems.extend(e.problems)
    seen: set[tuple[str, str, str]] = set()
    for r in resources:
        key = (r.kind, r.metadata.namespace, r.metadata.name)
        if key in seen:
            problems.append(f"{path}: {r.kind} {r.metadata.namespace}/{r.metadata.name} is defined twice")
        seen.add(key)
    if problems:
        raise ResourceError(problems)
    return resources


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
    for file in args.files:
        try:
            resources = load_resources(file)
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

    v = sub.add_parser("validate", help="check TrainingJob/ModelServer/ModelPipeline files; exit 1 naming every bad field")
    v.add_argument("files", nargs="+", metavar="FILE")
    v.set_defaults(func=_cmd_validate)
