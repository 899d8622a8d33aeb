"""What a real API server does with a custom resource, as far as tests can do it without one.

Given the generated CRD: apply structural defaults, validate against the OpenAPI v3 schema
(via jsonschema), evaluate every CEL ``x-kubernetes-validations`` rule (transition rules
too, when an old object is given) with cel-python, and prune fields the schema does not
declare. Tests use it to show the schema itself (not only the pydantic twin) accepts the
samples and rejects what it must, and that status patches survive pruning.
"""

from __future__ import annotations

import copy
from typing import Any

import celpy
import jsonschema

from mlvisor.operator import crdgen


def openapi_schema(kind: str) -> dict[str, Any]:
    return crdgen.crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def to_jsonschema(node: dict[str, Any]) -> dict[str, Any]:
    """OpenAPI v3.0 (Kubernetes flavour) -> JSON Schema draft 2020-12."""
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key.startswith("x-kubernetes-") or key in ("nullable", "default", "description"):
            continue
        if key == "properties":
            out[key] = {k: to_jsonschema(v) for k, v in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = to_jsonschema(value)
        elif key == "anyOf":
            out[key] = [to_jsonschema(v) for v in value]
        elif key in ("exclusiveMinimum", "exclusiveMaximum"):
            continue
        else:
            out[key] = value
    if node.get("exclusiveMinimum") is True:
        out["exclusiveMinimum"] = out.pop("minimum")
    if node.get("exclusiveMaximum") is True:
        out["exclusiveMaximum"] = out.pop("maximum")
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if "enum" in out and node.get("nullable"):
        out["enum"] = [*out["enum"], None]
    return out


def apply_defaults(schema: dict[str, Any], obj: Any) -> Any:
    """Structural defaulting: missing properties with a default get it, recursively."""
    if isinstance(obj, dict) and "properties" in schema:
        for name, sub in schema["properties"].items():
            if name not in obj and "default" in sub:
                obj[name] = copy.deepcopy(sub["default"])
            if name in obj:
                obj[name] = apply_defaults(sub, obj[name])
    elif isinstance(obj, dict) and isinstance(schema.get("additionalProperties"), dict):
        for name in obj:
            obj[name] = apply_defaults(schema["additionalProperties"], obj[name])
    elif isinstance(obj, list) and isinstance(schema.get("items"), dict):
        return [apply_defaults(schema["items"], x) for x in obj]
    return obj


_CEL = celpy.Environment()


def _cel_errors(schema: dict[str, Any], obj: Any, old: Any, path: str) -> list[str]:
    errors: list[str] = []
    for rule in schema.get("x-kubernetes-validations", []):
        transition = "oldSelf" in rule["rule"]
        if transition and old is None:
            continue  # transition rules only run on updates, with both values present
        activation = {"self": celpy.json_to_cel(obj)}
        if transition:
            activation["oldSelf"] = celpy.json_to_cel(old)
        program = _CEL.program(_CEL.compile(rule["rule"]))
        result = program.evaluate(activation)
        if result is not True and result != celpy.celtypes.BoolType(True):
            field = path + rule.get("fieldPath", "")
            errors.append(f"{field or '<root>'}: {rule['message']}")
    if isinstance(obj, dict) and "properties" in schema:
        for name, sub in schema["properties"].items():
            if name in obj and obj[name] is not None:
                old_sub = old.get(name) if isinstance(old, dict) else None
                errors += _cel_errors(sub, obj[name], old_sub, f"{path}.{name}")
    elif isinstance(obj, dict) and isinstance(schema.get("additionalProperties"), dict):
        for name, value in obj.items():
            errors += _cel_errors(schema["additionalProperties"], value, None, f"{path}.{name}")
    elif isinstance(obj, list) and isinstance(schema.get("items"), dict):
        for i, value in enumerate(obj):
            errors += _cel_errors(schema["items"], value, None, f"{path}[{i}]")
    return errors


def validate(kind: str, obj: dict[str, Any], old: dict[str, Any] | None = None) -> list[str]:
    """Errors the API server would report for creating (or updating from ``old``) ``obj``."""
    schema = openapi_schema(kind)
    obj = apply_defaults(schema, copy.deepcopy(obj))
    if old is not None:
        old = apply_defaults(schema, copy.deepcopy(old))
    validator = jsonschema.Draft202012Validator(to_jsonschema(schema))
    errors = [
        f"{'.'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}"
        for e in validator.iter_errors(obj)
    ]
    if errors:
        return errors  # the API server stops at schema errors before running CEL
    return _cel_errors(schema, obj, old, "")


def pruned_paths(schema: dict[str, Any], obj: Any, path: str = "") -> list[str]:
    """Field paths of ``obj`` a structural schema does not declare (the API server drops them)."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    found: list[str] = []
    if isinstance(obj, dict):
        if "properties" in schema:
            for name, value in obj.items():
                if name not in schema["properties"]:
                    found.append(f"{path}.{name}")
                else:
                    found += pruned_paths(schema["properties"][name], value, f"{path}.{name}")
        elif isinstance(schema.get("additionalProperties"), dict):
            for name, value in obj.items():
                found += pruned_paths(schema["additionalProperties"], value, f"{path}.{name}")
        elif obj:
            found.append(f"{path} (object without declared fields)")
    elif isinstance(obj, list) and isinstance(schema.get("items"), dict):
        for i, value in enumerate(obj):
            found += pruned_paths(schema["items"], value, f"{path}[{i}]")
    return found
