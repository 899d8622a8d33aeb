"""The CRDs are generated from api.py, structural, and reject exactly what the models reject."""

from __future__ import annotations

import copy
import subprocess
import sys
from typing import Any

import pytest
import yaml

from helpers.crd_validator import openapi_schema, pruned_paths, validate
from helpers.paths import REPO
from mlvisor import api
from mlvisor.api.documents import parse_resource
from mlvisor.api.problems import ResourceError
from mlvisor.operator import crdgen
from mlvisor.operator.resources_cli import load_resources

ROOT = REPO
CRDS = ROOT / "manifests" / "crds"
SAMPLES = sorted((ROOT / "manifests" / "samples").glob("*.yaml"))


@pytest.mark.parametrize("kind", list(api.KINDS))
def test_committed_crd_matches_the_models(kind):
    committed = (CRDS / crdgen.crd_filename(kind)).read_text()
    assert committed == crdgen.render(kind), (
        f"manifests/crds/{crdgen.crd_filename(kind)} drifted from operator/api.py: "
        "run `mlvisor crds --output manifests/crds`"
    )


def _walk(node: dict[str, Any], path: str = "$"):
    yield path, node
    for name, sub in node.get("properties", {}).items():
        yield from _walk(sub, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _walk(node["additionalProperties"], f"{path}{{}}")


@pytest.mark.parametrize("kind", list(api.KINDS))
def test_schema_is_structural(kind):
    schema = openapi_schema(kind)
    for path, node in _walk(schema):
        assert "$ref" not in node and "$defs" not in node, path
        assert node.get("type") or node.get("x-kubernetes-int-or-string") or node.get(
            "x-kubernetes-preserve-unknown-fields"
        ), f"{path} has no type"
        assert not ("properties" in node and "additionalProperties" in node), path
        if "anyOf" in node:
            assert node.get("x-kubernetes-int-or-string"), f"{path}: anyOf only for int-or-string"
        for bound in ("exclusiveMinimum", "exclusiveMaximum"):
            assert node.get(bound, True) is True, f"{path}: {bound} must be boolean in OpenAPI v3.0"
        if "default" in node:  # defaults must themselves be valid, or the API server rejects the CRD
            assert validate_default(node), path


def validate_default(node: dict[str, Any]) -> bool:
    import jsonschema

    from helpers.crd_validator import apply_defaults, to_jsonschema

    value = apply_defaults(node, copy.deepcopy(node["default"]))
    return jsonschema.Draft202012Validator(to_jsonschema(node)).is_valid(value)


@pytest.mark.parametrize("kind", list(api.KINDS))
def test_every_spec_field_is_documented(kind):
    spec = openapi_schema(kind)["properties"]["spec"]
    undocumented = [p for p, n in _walk(spec) if p != "$" and not n.get("description") and not p.endswith("[]") and not p.endswith("{}")]
    assert undocumented == []


@pytest.mark.parametrize("kind", list(api.KINDS))
def test_crd_shape(kind):
    doc = crdgen.crd(kind)
    version = doc["spec"]["versions"][0]
    expected: dict[str, Any] = {"status": {}}
    if kind == "ModelServer":  # kubectl scale and HorizontalPodAutoscalers
        expected["scale"] = {"specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas",
                             "labelSelectorPath": ".status.selector"}
    assert version["subresources"] == expected
    assert doc["spec"]["names"]["shortNames"] == [api.SHORT_NAMES[kind]]
    assert doc["spec"]["names"]["categories"] == ["mlvisor"]
    paths = [c["jsonPath"] for c in version["additionalPrinterColumns"]]
    assert any('conditions[?(@.type==' in p for p in paths), "a column must read conditions by type"
    assert not any("[-1:]" in p for p in paths)


def _docs() -> list[dict[str, Any]]:
    """The mlvisor resources of the samples (the samples also hold built-in objects, e.g. an HPA)."""
    return [d for f in SAMPLES for d in yaml.safe_load_all(f.read_text()) if d and d["apiVersion"] == api.API_VERSION]


def test_samples_cover_what_users_copy():
    kinds = [(d["kind"], d["metadata"]["name"]) for d in _docs()]
    assert ("TrainingJob", "iris") in kinds and ("ModelServer", "iris") in kinds
    search = [d for d in _docs() if d["kind"] == "TrainingJob" and d["spec"].get("search")]
    assert search and search[0]["spec"]["workers"] == 2
    (pipeline,) = [d for d in _docs() if d["kind"] == "ModelPipeline"]
    spec = pipeline["spec"]
    assert {"training", "serving", "promotion", "schedule", "supervision"} <= spec.keys()
    assert spec["supervision"]["strategy"] == "RestForOne"


@pytest.mark.parametrize("doc", _docs(), ids=lambda d: f"{d['kind']}-{d['metadata']['name']}")
def test_samples_are_accepted_by_the_crd_and_the_models(doc):
    assert validate(doc["kind"], doc) == []
    parse_resource(doc)


def _job() -> dict[str, Any]:
    return copy.deepcopy(next(d for d in _docs() if d["kind"] == "TrainingJob" and d["metadata"]["name"] == "iris"))


def _server() -> dict[str, Any]:
    return copy.deepcopy(next(d for d in _docs() if d["kind"] == "ModelServer"))


def _pipeline() -> dict[str, Any]:
    return copy.deepcopy(next(d for d in _docs() if d["kind"] == "ModelPipeline"))


def _set(doc, dotted, value):
    node = doc
    *parents, last = dotted.split(".")
    for p in parents:
        node = node.setdefault(p, {})
    if value is _DELETE:
        node.pop(last, None)
    else:
        node[last] = value


_DELETE = object()

INVALID = [
    # (base, field path to change, value, text the field path in messages must contain)
    ("job", "spec.supervision.maxRestarts", -1, "maxRestarts"),
    ("job", "spec.supervision.strategy", "OneForSome", "strategy"),
    ("job", "spec.dataset.csv", {"path": "train.csv", "target": "y"}, "dataset"),
    ("job", "spec.estimator", _DELETE, "estimator"),
    ("job", "spec.dataset", {}, "dataset"),
    ("job", "spec.workers", 3, "workers"),
    ("job", "spec.testSize", 1.0, "testSize"),
    ("job", "spec.supervision.backoff", {"initialSeconds": 10, "maxSeconds": 5}, "backoff"),
    ("job", "spec.supervision.failurePolicy", [{"onExitCodes": [2], "onReasons": ["Evicted"], "action": "Fail"}], "failurePolicy"),
    ("job", "spec.estimator.class", "os.system", "class"),
    ("job", "spec.estimator.params", {f"p{i}": i for i in range(65)}, "params"),
    ("job", "spec.dataset", {"csv": {"path": "../etc/passwd", "target": "y"}}, "path"),
    ("server", "spec.model.uri", "pvc://mlvisor-models/default/iris/v1/", "model"),
    ("server", "spec.model", {}, "model"),
    ("server", "spec.modelName", "has space", "modelName"),
    ("server", "spec.supervision.onExhausted", "Retry", "onExhausted"),
    ("server", "spec.batching.maxBatchSize", 0, "maxBatchSize"),
    ("pipeline", "spec.schedule", "every night", "schedule"),
    ("pipeline", "spec.schedule", "0 3 * * * *", "schedule"),
    ("pipeline", "spec.supervision.strategy", "OneForSome", "strategy"),
    ("pipeline", "spec.supervision.backoff", {"initialSeconds": 10, "maxSeconds": 5}, "backoff"),
    ("pipeline", "spec.promotion.minScore", "high", "minScore"),
    ("pipeline", "spec.promotion.mustImprove", "maybe", "mustImprove"),
    ("pipeline", "spec.runHistoryLimit", 0, "runHistoryLimit"),
    ("pipeline", "spec.training", _DELETE, "training"),
    ("pipeline", "spec.training.workers", 3, "workers"),
    ("pipeline", "spec.serving.replicas", -1, "replicas"),
    ("server", "spec.service", {"port": 8081, "grpcPort": 8081}, "grpcPort"),
    ("server", "spec.service.grpcPort", 70000, "grpcPort"),
    ("server", "spec.replicas", 101, "replicas"),
    ("job", "spec.dataset", {"uri": "s3://bucket/train.csv"}, "target"),
    ("job", "spec.dataset", {"csv": {"path": "a.csv", "target": "y"}, "target": "y"}, "target"),
    ("job", "spec.dataset", {"uri": "s3://bucket/train.data", "target": "y"}, "format"),
    ("job", "spec.dataset", {"uri": "s3://bucket/train", "target": "y", "format": "json"}, "format"),
    ("job", "spec.dataset", {"uri": "ftp://host/train.csv", "target": "y"}, "uri"),
    ("job", "spec.dataset", {"uri": "pvc://data/../etc/train.csv", "target": "y"}, "uri"),
    ("job", "spec.dataset", {"builtin": "iris", "features": {"exclude": ["a"]}}, "features"),
    ("job", "spec.dataset", {"uri": "https://host/train.csv", "target": "y", "credentials": {"secretName": "s3"}}, "credentials"),
    ("job", "spec.dataset", {"uri": "s3://bucket/train.csv", "target": "y", "credentials": {"secretName": "Not_A_Name"}}, "secretName"),
    ("job", "spec.dataset", {"uri": "s3://bucket/t.csv", "target": "y", "features": {"include": ["a"], "exclude": ["b"]}}, "features"),
    ("job", "spec.dataset", {"uri": "s3://bucket/t.csv", "target": "y", "features": {"encoding": "Binary"}}, "encoding"),
    ("job", "spec.output", {"credentials": {"secretName": "s3"}}, "credentials"),
    ("job", "spec.output", {"uri": "https://host/models"}, "uri"),
    ("server", "spec.model", {"uri": "pvc://models/default/iris/v1/", "credentials": {"secretName": "s3"}}, "credentials"),
    ("server", "spec.model", {"uri": "gs://bucket/iris/v1/"}, "uri"),
    ("job", "spec.search", {"method": "Random", "nTrials": 3, "grid": {"max_depth": [2]}}, "distributions"),
    ("job", "spec.search", {"method": "Random", "nTrials": 3, "grid": {"max_depth": [2]},
                            "distributions": {"max_depth": {"choice": [2]}}}, "grid"),
    ("job", "spec.search", {"method": "Grid", "cv": 3}, "grid"),
    ("job", "spec.search", {"method": "Random", "nTrials": 3}, "distributions"),
    ("job", "spec.search", {"method": "random", "nTrials": 3, "distributions": {"C": {"choice": [1]}}}, "method"),
    ("job", "spec.search", {"grid": {"max_depth": [2]}, "nTrials": 3}, "method"),
    ("job", "spec.search", {"method": "Bayesian", "nTrials": 0, "distributions": {"C": {"choice": [1]}}}, "nTrials"),
    ("job", "spec.search", {"method": "Bayesian", "nTrials": 3,
                            "distributions": {"C": {"uniform": {"low": 2, "high": 1.5}}}}, "high"),
    ("job", "spec.search", {"method": "Bayesian", "nTrials": 3,
                            "distributions": {"C": {"loguniform": {"low": 0, "high": 10}}}}, "loguniform"),
    ("job", "spec.search", {"method": "Random", "nTrials": 3,
                            "distributions": {"C": {"randint": {"low": 3, "high": 3}}}}, "randint"),
    ("job", "spec.search", {"method": "Random", "nTrials": 3,
                            "distributions": {"C": {"choice": [1], "randint": {"low": 1, "high": 3}}}}, "distributions.C"),
    ("job", "spec.search", {"method": "Random", "nTrials": 3, "distributions": {"C": {}}}, "distributions.C"),
    ("job", "spec.search", {"grid": {"max_depth": [2]}, "cv": 3, "earlyStopping": {"type": "Median", "minFolds": 3}},
     "minFolds"),
    ("job", "spec.search", {"grid": {"max_depth": [2]}, "earlyStopping": {"type": "Hyperband"}}, "type"),
    # Found by the fault tier's generator: a quantity the Deployment could not hold was a 400
    # from the API server on every reconcile, for ever.
    ("server", "spec.resources", {"limits": {"cpu": "abc"}}, "cpu"),
    ("server", "spec.resources", {"requests": {"memory": -1}}, "memory"),
    ("job", "spec.resources", {"limits": {"memory": "1 GB"}}, "memory"),
]


@pytest.mark.parametrize(("base", "field", "value", "named"), INVALID, ids=[f"{b}:{f}" for b, f, _, _ in INVALID])
def test_invalid_resources_are_rejected_by_the_crd_and_by_mlvisor_validate(base, field, value, named, tmp_path):
    doc = {"job": _job, "server": _server, "pipeline": _pipeline}[base]()
    _set(doc, field, value)
    crd_errors = validate(doc["kind"], doc)
    assert crd_errors, "the CRD schema accepted an invalid resource"
    with pytest.raises(ResourceError) as e:
        parse_resource(doc)
    assert any(named in line for line in e.value.problems), e.value.problems
    # The command line says the same, naming the field, with a non-zero exit.
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(doc))
    run = subprocess.run([sys.executable, "-m", "mlvisor.operator.cli", "validate", str(path)], capture_output=True, text=True)
    assert run.returncode == 1
    assert named in run.stderr


def test_training_fields_are_immutable_but_suspend_is_not():
    old = _job()
    new = copy.deepcopy(old)
    new["spec"]["estimator"]["params"]["n_estimators"] = 5
    errors = validate("TrainingJob", new, old=old)
    assert any("spec.estimator is immutable" in e for e in errors), errors
    added_search = copy.deepcopy(old)
    added_search["spec"]["search"] = {"grid": {"max_depth": [2]}}
    assert any("spec.search is immutable" in e for e in validate("TrainingJob", added_search, old=old))
    resumed = copy.deepcopy(old)
    resumed["spec"]["suspend"] = True
    resumed["spec"]["supervision"]["maxRestarts"] = 7
    assert validate("TrainingJob", resumed, old=old) == []


def test_a_pipeline_refuses_a_serving_model_by_name():
    """The pipeline sets the model; a ModelServer spec pasted whole gets told so, not just "unknown field"."""
    doc = _pipeline()
    doc["spec"]["serving"]["model"] = {"uri": "pvc://mlvisor-models/default/iris/v1/"}
    spec_schema = openapi_schema("ModelPipeline")["properties"]["spec"]
    assert pruned_paths(spec_schema, doc["spec"], ".spec") == [".spec.serving.model"]  # the API server drops it
    with pytest.raises(ResourceError) as e:
        parse_resource(doc)
    assert any("spec.serving.model must not be set" in line for line in e.value.problems), e.value.problems


def test_pipeline_training_fields_are_not_immutable_a_change_is_a_new_run():
    old = _pipeline()
    new = copy.deepcopy(old)
    new["spec"]["training"]["estimator"]["params"]["n_estimators"] = 5
    new["spec"]["training"]["dataset"] = {"builtin": "wine"}
    assert validate("ModelPipeline", new, old=old) == []
    rules = [r["rule"] for p, n in _walk(openapi_schema("ModelPipeline")) for r in n.get("x-kubernetes-validations", [])]
    assert rules and not any("oldSelf" in r for r in rules)
    assert any(r == "has(self.search) || self.workers == 1" for r in rules), "the non-transition rules are kept"


def test_pipeline_printer_columns():
    columns = {c["name"]: c["jsonPath"] for c in crdgen.crd("ModelPipeline")["spec"]["versions"][0]["additionalPrinterColumns"]}
    assert columns["Phase"] == ".status.phase"
    assert columns["Serving-Version"] == ".status.servingVersion"
    assert columns["Score"] == ".status.servingScore"
    assert columns["Restarts"] == ".status.supervision.totalRestarts"
    assert columns["Age"] == ".metadata.creationTimestamp"
    assert crdgen.crd("ModelPipeline")["spec"]["names"]["shortNames"] == ["mp"]


def test_default_status_and_model_status_survive_pruning():
    for kind, status in (
        ("TrainingJob", api.TrainingJobStatus(model=api.ModelInfo(uri="pvc://m/x/", version="v", metrics={"accuracy": 1.0}, best_params={"max_depth": 2}))),
        ("ModelServer", api.ModelServerStatus(url="http://x", model_version="v")),
    ):
        schema = openapi_schema(kind)["properties"]["status"]
        assert pruned_paths(schema, status.to_wire()) == []
        assert pruned_paths(schema, {"notDeclared": 1}) == [".notDeclared"]


def test_load_resources_reports_every_problem_with_file_and_document(tmp_path):
    path = tmp_path / "two.yaml"
    job, server = _job(), _server()
    job["spec"]["supervision"]["maxRestarts"] = -2
    server["spec"]["replicas"] = "two"
    path.write_text(yaml.safe_dump_all([job, server]))
    with pytest.raises(ResourceError) as e:
        load_resources(path)
    text = str(e.value)
    assert "(document 1)" in text and "spec.supervision.maxRestarts" in text
    assert "(document 2)" in text and "spec.replicas" in text
    path.write_text("kind: TrainingJb\napiVersion: mlvisor.dev/v1alpha1\n")
    with pytest.raises(ResourceError, match="kind: expected one of TrainingJob, ModelServer"):
        load_resources(path)
    path.write_text("a: [unclosed\n")
    with pytest.raises(ResourceError, match="not valid YAML"):
        load_resources(path)


def _cel_visible(node: dict[str, Any]) -> bool:
    """Whether the API server gives this node a CEL type (apiextensions' SchemaDeclType): an
    untyped node (free-form data) has none, nor has a list or map of such nodes, and a
    property without one is left out of ``self``, so a rule that names it does not compile."""
    if node.get("x-kubernetes-int-or-string"):
        return True
    kind = node.get("type")
    if not kind:
        return False
    if kind == "array":
        return isinstance(node.get("items"), dict) and _cel_visible(node["items"])
    if kind == "object" and isinstance(node.get("additionalProperties"), dict):
        return _cel_visible(node["additionalProperties"])
    return True


@pytest.mark.parametrize("kind", list(api.KINDS))
def test_cel_rules_name_only_fields_the_api_server_gives_a_type(kind):
    """cel-python evaluates rules on plain JSON, so it cannot see what a real API server refuses
    to compile: `has(self.grid)` for a grid of any values ("undefined field 'grid'")."""
    import re

    for path, node in _walk(openapi_schema(kind)):
        for rule in node.get("x-kubernetes-validations", []):
            for name in re.findall(r"\b(?:self|oldSelf)\.([A-Za-z_]\w*)", rule["rule"]):
                prop = node.get("properties", {}).get(name)
                assert prop is not None and _cel_visible(prop), f"{path}: {rule['rule']!r} names {name!r}, which CEL cannot see"


def test_a_bad_quantity_is_named_once_with_what_was_given() -> None:
    doc = _server()
    _set(doc, "spec.resources", {"limits": {"cpu": "one"}})
    with pytest.raises(ResourceError) as e:
        parse_resource(doc)
    (line,) = [p for p in e.value.problems if "cpu" in p]
    assert line.endswith("spec.resources.limits.cpu: expected a non-negative Kubernetes quantity such as 500m, 2, "
                         "1.5 or 256Mi (got 'one')"), line


def test_only_ruled_models_judge_rules_and_a_model_with_rules_must_be_one() -> None:
    from mlvisor.api.resources import Model, Rule, Ruled

    ruled = [cls for cls in vars(api.resources).values()
             if isinstance(cls, type) and issubclass(cls, Model) and cls.__dict__.get("__rules__")]
    assert ruled and all(issubclass(cls, Ruled) for cls in ruled)
    assert "_judge_rules" not in dir(api.TrainingJobStatus) and "_judge_rules" in dir(api.TrainingJobSpec)
    with pytest.raises(TypeError, match="derive it from Ruled"):
        class Unjudged(Model):  # its rule would never be judged
            __rules__ = (Rule("self.a > 0", "a must be positive", lambda f: f.get("a") > 0),)
            a: int = 1
