"""Fixtures of the real-cluster tier: a World on the cluster MLVISOR_E2E_KUBECONFIG points at."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from integration.world import World, kubernetes_transport

SKIP_REASON = "no cluster: set MLVISOR_E2E_KUBECONFIG to a kubeconfig of a cluster with mlvisor deployed (make e2e does it)"


@pytest.fixture(scope="session")
def kube() -> World:
    kubeconfig = os.environ.get("MLVISOR_E2E_KUBECONFIG")
    if not kubeconfig:
        pytest.skip(SKIP_REASON)
    return World(kubernetes_transport(kubeconfig), namespace=os.environ.get("MLVISOR_E2E_NAMESPACE", "default"))


@pytest.fixture
def unique() -> Iterator[str]:
    """A name no earlier run used (resources of failed runs may linger until the cluster is deleted)."""
    yield f"t{uuid.uuid4().hex[:6]}"
