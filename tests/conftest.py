"""Suite-wide: how ``pytest -n 2`` (the README's test command) spreads the tiers over two workers.

The cluster tier shares one control plane with a process node (one network bridge, one state
folder, one audit log that test_zz_rbac reads last), so its modules run in order on one worker;
the fault tier's node-less plane is another unit; the e2e tests start ``mlvisor run`` processes
and stay together. Unit, schema and integration tests go one by one to whichever worker is free.

(``--dist loadgroup`` with ``xdist_group`` marks would say the same, but with pytest 9.2 and
pytest-xdist 3.8 the group suffix never reaches the scheduler, so the scheduler is chosen here.)
"""

from __future__ import annotations

from typing import Any

_PLANE = ("tests/cluster/test_cluster.py", "tests/cluster/test_pipeline.py", "tests/cluster/test_zz_rbac.py")
_FAULTS = ("tests/cluster/test_faults.py", "tests/cluster/test_fuzz_resources.py")


def _unit_of_work(nodeid: str) -> str:
    path = nodeid.split("::", 1)[0]
    if path in _PLANE:
        return "cluster-plane"
    if path in _FAULTS:
        return "cluster-faults"
    if path.startswith("tests/e2e/"):
        return "e2e"
    return nodeid


def pytest_xdist_make_scheduler(config: Any, log: Any) -> Any:
    from xdist.scheduler import LoadScopeScheduling

    class TierScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _unit_of_work(nodeid)

    return TierScheduling(config, log)
