"""Reading the TrainingJob spec a worker runs, and the one error type that means "do not retry".

A worker gets its spec either as a file (``--spec``/``mlvisor train FILE``: a TrainingJob
document in YAML or JSON, or a bare spec) or as the JSON of the spec in ``MLVISOR_SPEC``.
Both are parsed with the same pydantic models the operator uses (``mlvisor.api``,
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

from pydantic import ValidationError

from mlvisor import api
from mlvisor.api.documents import read_documents, read_resource_file
from mlvisor.api.problems import ResourceError, describe_validation_error


class InvalidSpec(Exception):
    """The spec or its data is invalid: exit code 2, retrying cannot help. The message says why."""


@dataclass(frozen=True)
class LoadedSpec:
    spec: api.TrainingJobSpec
    name: str | None
    """metadata.name of the TrainingJob document, when the input was a whole document."""


def _schema_problems(error: ValidationError, raw_spec: Any, prefix: str, source: str,
                     data_dir: Path | None) -> InvalidSpec:
    """Every problem of a spec that does not parse: the schema's, in the kernel's words
    (:mod:`mlvisor.api.problems`, as ``mlvisor validate`` and the operator say them), then the
    pre-flight judge's on the parts that are valid, as ``mlvisor validate`` lists them."""
    from mlvisor.trainer.preflight import SpecParts, spec_problems

    problems = describe_validation_error(error, prefix)
    problems += spec_problems(SpecParts.salvage(raw_spec), data_dir)
    return InvalidSpec(f"{source}: " + "; ".join(problems))


def parse_spec_document(doc: Any, source: str, data_dir: Path | None = None) -> LoadedSpec:
    """A TrainingJob document (has ``kind`` or ``spec``) or a bare spec mapping.

    With the API server's types (pydantic's strict JSON mode), as ``mlvisor validate`` judges:
    ``workers: "2"`` is refused, not taken for 2. ``data_dir``: where a CSV dataset is, to
    judge it too when the spec does not parse.
    """
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
            job = api.TrainingJob.model_validate_json(json.dumps(doc), strict=True)
        except ValidationError as e:
            raise _schema_problems(e, doc.get("spec"), "", source, data_dir) from e
        return LoadedSpec(spec=job.spec, name=job.metadata.name)
    try:
        spec = api.TrainingJobSpec.model_validate_json(json.dumps(doc), strict=True)
    except ValidationError as e:
        raise _schema_problems(e, doc, "spec.", source, data_dir) from e
    return LoadedSpec(spec=spec, name=None)


def load_spec_file(path: Path, data_dir: Path | None = None) -> LoadedSpec:
    """Read a YAML or JSON file as kubectl reads it; with several documents, the single TrainingJob among them.

    The kernel's reader (:func:`mlvisor.api.documents.read_documents`) gives the file the
    meaning it has to ``kubectl apply`` and ``mlvisor validate``: ``C: 1e-2`` is 0.01,
    ``target: y`` is a boolean, ``{0: 1}`` has the key "0".
    """
    path = Path(path)
    if not path.exists():
        raise InvalidSpec(f"spec file {path} does not exist")
    try:
        reading = read_documents(read_resource_file(path), f"spec file {path}")
    except ResourceError as e:
        raise InvalidSpec("; ".join(e.problems)) from e
    docs = [d.value for d in reading.documents]
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
    return parse_spec_document(docs[0], str(path), data_dir)


def load_spec_json(text: str, source: str = "MLVISOR_SPEC", data_dir: Path | None = None) -> LoadedSpec:
    """The JSON of a spec (``api.TrainingJobSpec.to_wire()``) or of a whole TrainingJob."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise InvalidSpec(f"{source} is not valid JSON: {e}") from e
    return parse_spec_document(doc, source, data_dir)
