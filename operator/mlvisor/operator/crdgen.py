"""Generate the CustomResourceDefinitions from the pydantic models in api.py.

The CRDs are never written by hand: this module turns each model's JSON Schema into a
Kubernetes *structural* OpenAPI v3 schema (no $ref, every node typed, nullable instead of
anyOf-null, OpenAPI 3.0 exclusive bounds, int-or-string and preserve-unknown-fields
markers, CEL rules carried over) and wraps it in a CRD with the status subresource, short
names, category and printer columns. A test fails when manifests/crds/ drifts from this.

Pure: pydantic and yaml only.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from mlvisor import api

_DROP = {"title", "examples", "$defs"}


def _resolve(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """One schema node: inline $ref, turn JSON Schema 2020-12 into structural OpenAPI v3.0."""
    node = dict(node)
    if "$ref" in node:
        target = copy.deepcopy(defs[node.pop("$ref").rsplit("/", 1)[-1]])
        # Field-level keys (description, default, ...) win over the referenced schema's.
        return _resolve({**target, **node}, defs)
    if "allOf" in node and len(node["allOf"]) == 1:
        inner = node.pop("allOf")[0]
        return _resolve({**inner, **node}, defs)
    if "anyOf" in node:
        options = node.pop("anyOf")
        non_null = [o for o in options if o != {"type": "null"}]
        nullable = len(non_null) < len(options)
        if len(non_null) == 1:
            merged = {**_resolve(non_null[0], defs), **node}
            if nullable:
                merged["nullable"] = True
            return _finish(merged, defs)
        if sorted(o.get("type") for o in non_null) == ["integer", "string"]:
            node["x-kubernetes-int-or-string"] = True
            node["anyOf"] = [{"type": "integer"}, {"type": "string"}]
            return _finish(node, defs, keep_anyof=True)
        raise ValueError(f"cannot express anyOf {options} structurally")
    return _finish(node, defs)


def _finish(node: dict[str, Any], defs: dict[str, Any], keep_anyof: bool = False) -> dict[str, Any]:
    for k in _DROP:
        node.pop(k, None)
    if "properties" in node:
        node["properties"] = {k: _resolve(v, defs) for k, v in node["properties"].items()}
    if isinstance(node.get("items"), dict) and node["items"]:
        node["items"] = _resolve(node["items"], defs)
    elif node.get("type") == "array":
        node["items"] = {"x-kubernetes-preserve-unknown-fields": True, "nullable": True}
    if node.get("type") == "object" and "additionalProperties" in node:
        ap = node.pop("additionalProperties")
        if isinstance(ap, dict) and ap and "properties" not in node:
            node["additionalProperties"] = _resolve(ap, defs)
        elif ap is True or ap == {}:
            node["x-kubernetes-preserve-unknown-fields"] = True
        # ap False (extra="forbid"): pruning and kubectl's field validation do that job, and
        # Kubernetes forbids properties and additionalProperties side by side.
    if "const" in node:
        node["enum"] = [node.pop("const")]
    for bound, plain in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        value = node.get(bound)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            node[plain] = node.pop(bound)
            node[bound] = True
    if node.get("x-kubernetes-int-or-string"):
        node.pop("type", None)
    if node.get("x-kubernetes-preserve-unknown-fields") and node.get("type") == "object":
        node.pop("additionalProperties", None)
    if not any(node.get(k) for k in ("type", "x-kubernetes-int-or-string", "x-kubernetes-preserve-unknown-fields")):
        node["x-kubernetes-preserve-unknown-fields"] = True  # Any: free-form data
    if "default" in node and node["default"] is None:
        del node["default"]
    if node.get("default") == {} and node.get("properties"):
        # A real API server checks a default against the node's CEL rules as written, without
        # applying the defaults nested inside it: `default: {}` on backoff made
        # `self.maxSeconds >= self.initialSeconds` fail ("no such key: maxSeconds") and the
        # TrainingJob CRD was refused. Spell the nested defaults out (children come first).
        node["default"] = {k: v["default"] for k, v in node["properties"].items() if "default" in v}
    if not keep_anyof:
        node.pop("anyOf", None)
    return node


def structural_schema(model: type[api.Model], mode: str = "validation") -> dict[str, Any]:
    """The structural OpenAPI v3 schema of one pydantic model."""
    raw = model.model_json_schema(by_alias=True, mode=mode)  # type: ignore[arg-type]
    defs = raw.pop("$defs", {})
    return _resolve(raw, defs)


def _top_schema(kind: str) -> dict[str, Any]:
    specs: dict[str, type[api.Model]] = {
        "TrainingJob": api.TrainingJobSpec,
        "ModelServer": api.ModelServerSpec,
        "ModelPipeline": api.ModelPipelineSpec,
    }
    spec_model, status_model = specs[kind], api.STATUSES[kind]
    spec = structural_schema(spec_model)
    status = structural_schema(status_model, mode="serialization")
    status.pop("required", None)  # status is written piecewise by the controller
    doc = api.KINDS[kind].__doc__ or ""
    return {
        "type": "object",
        "description": doc.strip(),
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
    }


def _condition_column(name: str, ctype: str, field: str = "status") -> dict[str, Any]:
    return {
        "name": name,
        "type": "string",
        "jsonPath": f'.status.conditions[?(@.type=="{ctype}")].{field}',
    }


PRINTER_COLUMNS: dict[str, list[dict[str, Any]]] = {
    "TrainingJob": [
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Workers", "type": "string", "jsonPath": ".status.workersSummary",
         "description": "succeeded/total workers"},
        {"name": "Progress", "type": "string", "jsonPath": ".status.progress.summary",
         "description": "a search's trials done/total"},
        {"name": "Restarts", "type": "integer", "jsonPath": ".status.supervision.totalRestarts"},
        {"name": "Score", "type": "number", "jsonPath": ".status.model.score",
         "description": "held-out accuracy (classifiers) or r2 (regressors)"},
        _condition_column("Succeeded", "Succeeded"),
        {**_condition_column("Reason", "Failed", "reason"), "priority": 1},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ],
    "ModelServer": [
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        _condition_column("Ready", "Ready"),
        {"name": "Replicas", "type": "integer", "jsonPath": ".status.readyReplicas",
         "description": "ready server pods"},
        {"name": "Desired", "type": "integer", "jsonPath": ".spec.replicas", "priority": 1},
        {"name": "Model-Version", "type": "string", "jsonPath": ".status.modelVersion"},
        {"name": "URL", "type": "string", "jsonPath": ".status.url"},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ],
    "ModelPipeline": [
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        _condition_column("Ready", "Ready"),
        {"name": "Serving-Version", "type": "string", "jsonPath": ".status.servingVersion",
         "description": "artifact version of the promoted run the ModelServer serves"},
        {"name": "Score", "type": "number", "jsonPath": ".status.servingScore",
         "description": "score of the served run"},
        {"name": "Restarts", "type": "integer", "jsonPath": ".status.supervision.totalRestarts",
         "description": "child restarts (training runs and ModelServers)"},
        {"name": "Runs", "type": "integer", "jsonPath": ".status.lastRun", "priority": 1},
        {"name": "Next-Run", "type": "date", "jsonPath": ".status.nextRunTime", "priority": 1},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ],
}


#: Subresources per kind: status for both; ModelServer also has scale (kubectl scale, HPA).
SUBRESOURCES: dict[str, dict[str, Any]] = {
    "TrainingJob": {"status": {}},
    "ModelServer": {
        "status": {},
        "scale": {
            "specReplicasPath": ".spec.replicas",
            "statusReplicasPath": ".status.replicas",
            "labelSelectorPath": ".status.selector",
        },
    },
}


def crd(kind: str) -> dict[str, Any]:
    """The CustomResourceDefinition of one kind (TrainingJob, ModelServer or ModelPipeline)."""
    plural = api.PLURALS[kind]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{plural}.{api.GROUP}",
            "labels": {"app.kubernetes.io/name": "mlvisor", "app.kubernetes.io/part-of": "mlvisor"},
        },
        "spec": {
            "group": api.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": [api.SHORT_NAMES[kind]],
                "categories": ["mlvisor"],
            },
            "versions": [
                {
                    "name": api.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": SUBRESOURCES.get(kind, {"status": {}}),
                    "additionalPrinterColumns": PRINTER_COLUMNS[kind],
                    "schema": {"openAPIV3Schema": _top_schema(kind)},
                }
            ],
        },
    }


HEADER = "# Generated by `mlvisor crds` from the typed API (operator/mlvisor/api/resources.py). Do not edit by hand.\n"


def crd_filename(kind: str) -> str:
    return f"{api.PLURALS[kind]}.{api.GROUP}.yaml"


def render(kind: str) -> str:
    return HEADER + yaml.safe_dump(crd(kind), sort_keys=False, width=100, allow_unicode=True)


def write_all(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for kind in api.KINDS:
        path = directory / crd_filename(kind)
        path.write_text(render(kind))
        written.append(path)
    return written
