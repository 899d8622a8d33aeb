"""Suite-wide: how ``pytest -n 2`` (the README's test command) spreads the tiers over two workers.

The cluster tier shares one cluster (one node, one state folder, one audit log that the
``cluster`` fixture checks once the tier's last test has run), so its modules run on one worker;
the node-less plane of the fault tier (and of the kubectl YAML comparison) is another unit; the
e2e tests start ``mlvisor run`` processes
and stay together. Unit, schema and integration tests go one by one to whichever worker is free.

(``--dist loadgroup`` with ``xdist_group`` marks would say the same, but with pytest 9.2 and
pytest-xdist 3.8 the group suffix never reaches the scheduler, so the scheduler is chosen here.)
"""

from __future__ import annotations

from typing import Any

_PLANE = ("tests/cluster/test_cluster.py", "tests/cluster/test_node.py", "tests/cluster/test_pipeline.py",
          "tests/cluster/test_search.py", "tests/cluster/test_object_store.py")
_FAULTS = ("tests/cluster/test_faults.py", "tests/cluster/test_fuzz_resources.py", "tests/cluster/test_kubectl_yaml.py",
           "tests/cluster/test_search_progress.py")


def _unit_of_work(nodeid: str) -> str:
    path = nodeid.split("::", 1)[0]
    if path in _PLANE:
        return "cluster-plane"
    if path in _FAULTS:
        return "cluster-faults"
    if path.startswith("tests/local/"):
        return "local"
    return nodeid


def pytest_xdist_make_scheduler(config: Any, log: Any) -> Any:
    from xdist.scheduler import LoadScopeScheduling

    class TierScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _unit_of_work(nodeid)

    return TierScheduling(config, log)
