"""A crash-looping server container backs off between in-place restarts, as a kubelet does.

``mlvisor run --restart-delay S`` waits S seconds before every in-place restart of a server
container (without it: the kubelet's curve, immediate then 10 s doubling to 300 s, unit-tested
in tests/unit/operator/test_supervision.py). The container is a real process that SIGKILLs
itself at every start (tests/local/data/crash_first.py records when each run began), so the
restarts are real deaths and their spacing is measured from the outside. Only lower bounds on
the spacing are asserted: a loaded machine can make restarts later, never earlier.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

DELAY = 0.5
MAX_RESTARTS = 3

SERVER = """\
apiVersion: mlvisor.dev/v1alpha1
kind: ModelServer
metadata:
  name: loop
spec:
  model:
    uri: file://{uri}/
  modelName: iris
  replicas: 1
  supervision:
    maxRestarts: {max_restarts}
    periodSeconds: 300
    onExhausted: Fail
"""


def test_a_crash_looping_server_waits_the_restart_delay_before_each_restart_then_fails(
    mlvisor_run, crash_wrapper, iris_artifact: Path, tmp_path: Path
) -> None:
    spec = tmp_path / "server.yaml"
    spec.write_text(SERVER.format(uri=iris_artifact, max_restarts=MAX_RESTARTS))
    state = tmp_path / "starts.txt"
    run = mlvisor_run(spec, args=["--no-table", "--restart-delay", str(DELAY),
                                  "--wrap", "server=" + crash_wrapper(state, times=-1)])
    failed = run.wait_for("the server Failed after its restart window filled",
                          lambda s: s["ModelServer/default/loop"]["phase"] == "Failed"
                          and s["ModelServer/default/loop"])
    assert failed["supervision"]["lastFailure"]["exitCode"] == 137
    assert run.wait_exit() == 1  # nothing left that can progress: the run ends, with a failure
    run.assert_no_orphans()

    starts = [float(line.split()[1]) for line in state.read_text().splitlines()]
    # The first run and one in-place restart per count up to the escalation (a late scale to
    # zero may let one more restart through, never fewer).
    assert len(starts) >= MAX_RESTARTS + 1, starts
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert all(gap >= DELAY for gap in gaps), f"restarts closer than --restart-delay {DELAY}: {gaps}"
