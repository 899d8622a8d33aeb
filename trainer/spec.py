"""Reading the TrainingJob spec a worker runs, and the one error type that means "do not retry".

A worker gets its spec either as a file (``--spec``/``mlvisor train FILE``: a TrainingJob
document in YAML or JSON, or a bare spec) or as the JSON of the spec in ``MLVISOR_SPEC``.
Both are parsed with the same pydantic models the operator uses (``mlvisor.operator.api``,
pure pydantic), so a spec the operator accepted parses identically here.

:class:`InvalidSpec` is raised for anything wrong with the spec or the data it points at;
the entry point turns it into exit code 2 (``api.EXIT_INVALID_SPEC``), which the default
failure policy treats as "fail the job, never restart".
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from mlvisor.operator import api


class InvalidSpec(Exception):
    """The spec or its data is invalid: exit code 2, retrying cannot help. The message says why."""


@dataclass(frozen=True)
class LoadedSpec:
    spec: api.TrainingJobSpec
    name: str | None
    """metadata.name of the TrainingJob document, when the input was a whole document."""


def describe_validation_error(error: ValidationError, prefix: str) -> str:
    """One line per problem, each naming the field path (camelCase, as written in the spec)."""
    lines = []
    for err in error.errors():
        loc = ".".join(str(p) for p in (prefix, *err["loc"]) if p != "")
        lines.append(f"{loc}: {err['msg']}")
    return "; ".join(lines)


def parse_spec_document(doc: Any, source: str) -> LoadedSpec:
    """A TrainingJob document (has ``kind`` or ``spec``) or a bare spec mapping."""
    if not isinstance(doc, dict):
        raise InvalidSpec(
            f"{source}: expected a TrainingJob document or a TrainingJob spec (a mapping), "
            f"got {type(doc).__name__}"
        )
    if "kind" in doc or "spec" in doc:
        kind = doc.get("kind")
        if kind != "TrainingJob":
            raise InvalidSpec(f"{source}: kind is {kind!r}; the trainer runs kind TrainingJob")
        try:
            job = api.TrainingJob.model_validate(doc)
        except ValidationError as e:
            raise InvalidSpec(f"{source}: {describe_validation_error(e, '')}") from e
        return LoadedSpec(spec=job.spec, name=job.metadata.name)
    try:
        spec = api.TrainingJobSpec.model_validate(doc)
    except ValidationError as e:
        raise InvalidSpec(f"{source}: {describe_validation_error(e, 'spec')}") from e
    return LoadedSpec(spec=spec, name=None)


def load_spec_file(path: Path) -> LoadedSpec:
    """Read a YAML or JSON file; with several YAML documents, the single TrainingJob among them."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError as e:
        raise InvalidSpec(f"spec file {path} does not exist") from e
    except (OSError, UnicodeDecodeError) as e:
        raise InvalidSpec(f"spec file {path} cannot be read: {e}") from e
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as e:
        raise InvalidSpec(f"spec file {path} is not valid YAML or JSON: {e}") from e
    if not docs:
        raise InvalidSpec(f"spec file {path} is empty: expected a TrainingJob")
    if len(docs) > 1:
        jobs = [d for d in docs if isinstance(d, dict) and d.get("kind") == "TrainingJob"]
        if len(jobs) != 1:
            raise InvalidSpec(
                f"spec file {path} holds {len(docs)} documents and {len(jobs)} of kind "
                "TrainingJob: expected exactly one TrainingJob"
            )
        docs = jobs
    return parse_spec_document(docs[0], str(path))


def load_spec_json(text: str, source: str = "MLVISOR_SPEC") -> LoadedSpec:
    """The JSON of a spec (``api.TrainingJobSpec.to_wire()``) or of a whole TrainingJob."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise InvalidSpec(f"{source} is not valid JSON: {e}") from e
    return parse_spec_document(doc, source)
