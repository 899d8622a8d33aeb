"""The operator's ClusterRole against what it really did: the API server's audit log of the whole tier.

Run by the ``cluster`` fixture when the tier's last test has finished (its teardown, before the
cluster stops), so every request the operator's ServiceAccount made in the tier is in the audit
log, whatever order the tests ran in. A failure is reported as an error in that teardown.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import yaml

from cluster.conftest import OPERATOR_SA, REPO, Cluster


def _granted(rules: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    return {(g, r, v) for rule in rules for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}


def check_operator_rbac(cluster: Cluster, collected: Iterable[str]) -> None:
    """Every call authorized; every grant used, when ``collected`` (test names) holds the whole tier."""
    from cluster import test_cluster, test_node, test_pipeline

    ran = {name.split("[")[0] for name in collected}
    tier = {n for module in (test_cluster, test_node, test_pipeline) for n in dir(module) if n.startswith("test_")}
    # A partial run (-k, one file) cannot tell which grants the whole tier uses, nor whether the
    # operator had made a call before it ended; it checks that no call was refused.
    whole = tier <= ran
    calls = [e for e in cluster.audit() if e["user"]["username"] == OPERATOR_SA and e.get("objectRef")]
    assert calls or not whole, "RBAC audit: no request of the operator's ServiceAccount reached the API server"
    forbidden = [(e["verb"], e["requestURI"]) for e in calls if e.get("responseStatus", {}).get("code") == 403]
    assert not forbidden, f"RBAC audit: the ClusterRole refused calls the operator makes: {forbidden[:10]}"
    used = set()
    for e in calls:
        ref = e["objectRef"]
        resource = ref["resource"] + (f"/{ref['subresource']}" if ref.get("subresource") else "")
        used.add((ref.get("apiGroup", ""), resource, e["verb"]))
    role = yaml.safe_load((REPO / "manifests" / "rbac" / "cluster-role.yaml").read_text())
    granted = _granted(role["rules"])
    assert used <= granted, f"RBAC audit: used but not granted: {sorted(used - granted)}"
    # Granted but never used by any request: only what authorization itself checks (the
    # OwnerReferencesPermissionEnforcement plugin asks for update on the owner's finalizers
    # when a child with blockOwnerDeletion is created; that is not a request of its own).
    unused = granted - used
    if not whole:
        return
    checked_by_admission = {("mlvisor.dev", f"{r}/finalizers", "update")
                            for r in ("trainingjobs", "modelservers", "modelpipelines")}
    # The pipeline deletes its ModelServer only to restart it after it Failed (its own rollback
    # exhausted); that path is driven in the emulator tier (tests/emulator/test_pipeline.py).
    # A run's TrainingJob is patched only while that run is in progress (spec.training.suspend
    # carried to it, or a hand edit put back); a run here trains in seconds, so that window is
    # checked by the planner tests (tests/unit/operator/), not raced for here.
    rare_paths = {("mlvisor.dev", "modelservers", "delete"), ("mlvisor.dev", "trainingjobs", "patch")}
    allowed = checked_by_admission | rare_paths
    assert unused <= allowed, f"RBAC audit: granted but never used in the whole tier: {sorted(unused - allowed)}"
