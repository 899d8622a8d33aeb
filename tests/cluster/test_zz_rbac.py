"""The operator's ClusterRole against what it really did: the API server's audit log of the whole tier.

This file sorts last in tests/cluster, so when it runs every scenario of the tier has run and
every request the operator's ServiceAccount made is in the audit log.
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from cluster import test_cluster, test_pipeline
from cluster.conftest import OPERATOR_SA, REPO, Cluster
from cluster.test_cluster import built_only


def _granted(rules: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    return {(g, r, v) for rule in rules for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}


def test_every_operator_call_was_authorized_and_the_cluster_role_grants_only_what_it_uses(
        cluster: Cluster, request: pytest.FixtureRequest) -> None:
    """Runs last (this file sorts last): the audit log then holds every call the operator made in the tier."""
    built_only(cluster, "the API server's audit log is read")
    calls = [e for e in cluster.audit() if e["user"]["username"] == OPERATOR_SA and e.get("objectRef")]
    assert calls, "no request of the operator's ServiceAccount reached the API server"
    forbidden = [(e["verb"], e["requestURI"]) for e in calls if e.get("responseStatus", {}).get("code") == 403]
    assert not forbidden, f"the ClusterRole refused calls the operator makes: {forbidden[:10]}"
    used = set()
    for e in calls:
        ref = e["objectRef"]
        resource = ref["resource"] + (f"/{ref['subresource']}" if ref.get("subresource") else "")
        used.add((ref.get("apiGroup", ""), resource, e["verb"]))
    role = yaml.safe_load((REPO / "manifests" / "rbac" / "cluster-role.yaml").read_text())
    granted = _granted(role["rules"])
    assert used <= granted, f"used but not granted: {sorted(used - granted)}"
    # Granted but never used by any request: only what authorization itself checks (the
    # OwnerReferencesPermissionEnforcement plugin asks for update on the owner's finalizers
    # when a child with blockOwnerDeletion is created; that is not a request of its own).
    unused = granted - used
    ran = {item.name.split("[")[0] for item in request.session.items}
    tier = {n for module in (test_cluster, test_pipeline) for n in dir(module) if n.startswith("test_")}
    if not tier <= ran:
        return  # a partial run (-k, one file) cannot tell which grants the whole tier uses
    checked_by_admission = {("mlvisor.dev", f"{r}/finalizers", "update")
                            for r in ("trainingjobs", "modelservers", "modelpipelines")}
    # The pipeline deletes its ModelServer only to restart it after it Failed (its own rollback
    # exhausted); that path is driven in the emulator tier (tests/integration/test_pipeline.py).
    # A run's TrainingJob is patched only while that run is in progress (spec.training.suspend
    # carried to it, or a hand edit put back); a run here trains in seconds, so that window is
    # checked by the planner tests (tests/unit/test_plan_pipeline.py), not raced for here.
    rare_paths = {("mlvisor.dev", "modelservers", "delete"), ("mlvisor.dev", "trainingjobs", "patch")}
    allowed = checked_by_admission | rare_paths
    assert unused <= allowed, f"granted but never used in the whole tier: {sorted(unused - allowed)}"
