"""The install tree builds with kustomize, and every built-in object in it is valid Kubernetes.

``kubectl kustomize manifests/`` is what ``kubectl apply -k manifests/`` applies; every object
it emits except the CRDs' own custom kinds is validated, strictly (unknown fields are errors),
against the Kubernetes OpenAPI schema that kubernetes-validate ships. The RBAC is checked
against what the operator actually calls, and the operator Deployment against the restricted
Pod Security Standard.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from helpers.paths import REPO

ROOT = REPO
K8S_VERSION = "1.32.0"  # kind's default node image at the time of writing; also the kubectl on the build machines


def _kustomize(path: Path) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl is not installed: it builds the kustomize tree (kubectl kustomize)")
    result = subprocess.run([kubectl, "kustomize", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


@pytest.fixture(scope="module")
def objects() -> list[dict[str, Any]]:
    return _kustomize(ROOT / "manifests")


def _by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def test_the_install_contains_everything_and_no_samples(objects: list[dict[str, Any]]) -> None:
    kinds = sorted((o["kind"], o["metadata"]["name"]) for o in objects)
    assert kinds == [
        ("ClusterRole", "mlvisor-operator"),
        ("ClusterRoleBinding", "mlvisor-operator"),
        ("CustomResourceDefinition", "modelpipelines.mlvisor.dev"),
        ("CustomResourceDefinition", "modelservers.mlvisor.dev"),
        ("CustomResourceDefinition", "trainingjobs.mlvisor.dev"),
        ("Deployment", "mlvisor-operator"),
        ("Namespace", "mlvisor-system"),
        ("PersistentVolumeClaim", "mlvisor-models"),
        ("ServiceAccount", "mlvisor-operator"),
    ]


def test_every_built_in_object_validates_strictly(objects: list[dict[str, Any]]) -> None:
    for obj in objects:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_validation_can_fail() -> None:
    bad = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"}, "spec": {"replicas": "one"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


def test_the_operator_runs_once_restricted_and_probed(objects: list[dict[str, Any]]) -> None:
    (deployment,) = _by_kind(objects, "Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 1 and spec["strategy"]["type"] == "Recreate"
    pod = spec["template"]["spec"]
    assert pod["serviceAccountName"] == "mlvisor-operator"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    (container,) = pod["containers"]
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert container["command"] == ["mlvisor", "operator"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert {"requests", "limits"} <= container["resources"].keys()
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["MLVISOR_IMAGE"] == container["image"]
    (namespace,) = _by_kind(objects, "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def _grants(role: dict[str, Any]) -> set[tuple[str, str, str]]:
    return {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}


def test_rbac_is_exactly_what_the_operator_uses(objects: list[dict[str, Any]]) -> None:
    (role,) = _by_kind(objects, "ClusterRole")
    grants = _grants(role)
    needed = {
        ("apiextensions.k8s.io", "customresourcedefinitions", "list"),
        ("apiextensions.k8s.io", "customresourcedefinitions", "watch"),
        *(("mlvisor.dev", r, v) for r in ("trainingjobs", "modelservers", "modelpipelines") for v in ("list", "watch")),
        # the pipeline controller creates, merge-patches and deletes its TrainingJobs and ModelServer
        *(("mlvisor.dev", r, v) for r in ("trainingjobs", "modelservers") for v in ("create", "patch", "delete")),
        *(("mlvisor.dev", f"{r}/status", "patch") for r in ("trainingjobs", "modelservers", "modelpipelines")),
        *(("mlvisor.dev", f"{r}/finalizers", "update") for r in ("trainingjobs", "modelservers", "modelpipelines")),
        *(("", "pods", v) for v in ("list", "watch", "create", "delete")),
        # reconciles read from the watch-fed store: no get anywhere
        *(("apps", "deployments", v) for v in ("list", "watch", "create", "patch")),
        *(("", "services", v) for v in ("list", "watch", "create", "patch")),
        ("", "events", "create"),
    }
    assert grants == needed
    assert not any("*" in x for g in grants for x in g)
    (binding,) = _by_kind(objects, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    (account,) = _by_kind(objects, "ServiceAccount")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account["metadata"]["name"],
                                    "namespace": account["metadata"]["namespace"]}]


def test_the_models_claim_is_where_the_samples_run(objects: list[dict[str, Any]]) -> None:
    (claim,) = _by_kind(objects, "PersistentVolumeClaim")
    assert claim["metadata"]["namespace"] == "default"
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert "storageClassName" not in claim["spec"], "kind's default storage class serves it"


def _sample_docs() -> list[dict[str, Any]]:
    samples = sorted((ROOT / "manifests" / "samples").glob("*.yaml"))
    assert samples
    return [doc for path in samples for doc in yaml.safe_load_all(path.read_text()) if doc]


def test_samples_are_mlvisor_resources_or_valid_kubernetes_objects() -> None:
    """Samples hold mlvisor resources (checked against the CRDs in test_crds.py) and built-in
    objects that work with them, e.g. a HorizontalPodAutoscaler; those validate strictly."""
    builtin = [d for d in _sample_docs() if d["apiVersion"] != "mlvisor.dev/v1alpha1"]
    assert builtin, "expected the HPA sample"
    for doc in builtin:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_the_hpa_sample_targets_a_sample_modelserver_through_its_scale_subresource(objects) -> None:
    docs = _sample_docs()
    (hpa,) = [d for d in docs if d["kind"] == "HorizontalPodAutoscaler"]
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"]) == ("mlvisor.dev/v1alpha1", "ModelServer")
    assert ("ModelServer", target["name"]) in {(d["kind"], d["metadata"]["name"]) for d in docs}
    (crd,) = [o for o in objects if o["kind"] == "CustomResourceDefinition" and o["spec"]["names"]["kind"] == "ModelServer"]
    scale = crd["spec"]["versions"][0]["subresources"]["scale"]
    assert scale == {"specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas",
                     "labelSelectorPath": ".status.selector"}
    status = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    assert status["replicas"]["type"] == "integer" and status["selector"]["type"] == "string"
    assert hpa["spec"]["minReplicas"] >= 1 and hpa["spec"]["maxReplicas"] <= 100  # spec.replicas' bounds
