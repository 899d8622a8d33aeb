"""The operator's pre-flight judge runs in a short-lived helper process, and says what the judge says.

The long-running operator must never hold scikit-learn, numpy or pandas (about 110 MB of its
resident set): its modules do not import them, and the judge runs in ``python -m
mlvisor.operator.kube.preflight``, started on the first spec to judge and stopped once idle. The
helper's answers are the in-process judge's, word for word, for specs that parse and for the
valid parts of specs that do not (``salvage``).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from mlvisor import api
from mlvisor.operator.kube.controllers import Controllers
from mlvisor.operator.kube.preflight import PreflightError, PreflightJudge
from mlvisor.operator.plan import OperatorConfig

HEAVY = ("sklearn", "numpy", "pandas", "scipy")

VALID = {
    "dataset": {"builtin": "iris"},
    "estimator": {"class": "sklearn.ensemble.RandomForestClassifier", "params": {"random_state": 0}},
    "search": {"grid": {"max_depth": [2, 4]}, "scoring": "accuracy"},
}
TYPOS = {
    "dataset": {"builtin": "iris"},
    "estimator": {"class": "sklearn.ensemble.RandomForestClassifier", "params": {"n_estimator": 10}},
    "search": {"grid": {"max_depth": [2]}, "scoring": "acuracy"},
}
UNFIT = {"dataset": {"builtin": "diabetes"}, "estimator": {"class": "sklearn.linear_model.LogisticRegression"}}
# The schema refuses testSize; the rest is judged all the same.
BROKEN_SCHEMA = {**TYPOS, "testSize": "a lot"}


@pytest.fixture(scope="module")
def judge() -> Iterator[PreflightJudge]:
    helper = PreflightJudge()
    yield helper
    helper.close()


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # a zombie until its parent reaps it: not running any more
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] == "Z"


@pytest.mark.parametrize("spec", [VALID, TYPOS, UNFIT], ids=["valid", "typos", "unfit"])
def test_the_helper_says_what_the_judge_says(judge: PreflightJudge, spec: dict[str, Any]) -> None:
    from mlvisor.trainer.preflight import spec_problems

    assert judge.judge(spec) == spec_problems(api.TrainingJobSpec.model_validate(spec))


def test_the_helper_judges_the_valid_parts_of_a_spec_whose_schema_is_wrong(judge: PreflightJudge) -> None:
    from mlvisor.trainer.preflight import SpecParts, spec_problems

    problems = judge.judge(BROKEN_SCHEMA, salvage=True)
    assert problems == spec_problems(SpecParts.salvage(BROKEN_SCHEMA))
    assert any("n_estimator" in p for p in problems) and any("acuracy" in p for p in problems)


def test_the_operator_never_imports_scikit_learn_numpy_or_pandas() -> None:
    """Its modules, a Controllers and a judgement through the helper leave none of them in the operator."""
    code = (
        "import sys, asyncio\n"
        "import mlvisor.operator.cli, mlvisor.operator.kube.handlers\n"
        "from mlvisor import api\n"
        "from mlvisor.operator.kube.controllers import Controllers, warm_up_preflight\n"
        "from mlvisor.operator.plan import OperatorConfig\n"
        "c = Controllers(kube=None, config=OperatorConfig(), metrics=None)\n"
        "warm_up_preflight(c.judge)\n"
        f"spec = {TYPOS!r}\n"
        "job = api.TrainingJob.model_validate({'apiVersion': 'mlvisor.dev/v1alpha1', 'kind': 'TrainingJob',\n"
        "    'metadata': {'name': 'j', 'uid': 'u', 'generation': 1}, 'spec': spec})\n"
        "from mlvisor.operator.reconcilers import Read\n"
        "problems = asyncio.run(c.preflight(Read(job, {'spec': spec})))\n"
        "assert any('n_estimator' in p for p in problems), problems\n"
        "assert c.judge.started == 1, c.judge.started\n"
        "c.judge.close()\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout


def test_an_idle_helper_exits_and_the_next_spec_starts_another() -> None:
    judge = PreflightJudge(idle_seconds=0.2)
    try:
        assert judge.judge(VALID) == []
        first = judge.pid
        assert first is not None
        deadline = time.monotonic() + 60
        while not _gone(first):
            assert time.monotonic() < deadline, "the idle helper did not exit"
            time.sleep(0.05)
        assert judge.judge(TYPOS) != []
        assert judge.started == 2
    finally:
        judge.close()
    assert judge.pid is None


def test_a_helper_that_dies_fails_the_judgement_and_the_next_one_starts_afresh() -> None:
    judge = PreflightJudge()
    try:
        assert judge.judge(VALID) == []
        pid = judge.pid
        assert pid is not None
        os.kill(pid, 9)
        with pytest.raises(PreflightError, match=r"exited|failed"):
            judge.judge(VALID)
        assert judge.judge(TYPOS) != [] and judge.started == 2
    finally:
        judge.close()


def test_without_scikit_learn_the_operator_leaves_the_judging_to_the_trainer() -> None:
    """An operator image without the trainer's libraries: no verdict (the trainer judges in its pod)."""
    fake = ("import sys, json\n"
            "for line in sys.stdin:\n"
            "    print(json.dumps({'unavailable': 'No module named sklearn'}), flush=True)\n")
    judge = PreflightJudge(command=[sys.executable, "-c", fake])
    try:
        assert judge.judge(TYPOS) == []
    finally:
        judge.close()


def test_a_judge_that_raises_is_an_error_not_a_verdict() -> None:
    judge = PreflightJudge()
    try:
        with pytest.raises(PreflightError, match="the pre-flight judge failed: ValidationError"):
            judge.judge({"dataset": "not a mapping"})
    finally:
        judge.close()


class _CountingJudge:
    """A judge that answers after a pause, counting its judgements; the first ``failures`` raise."""

    def __init__(self, failures: int = 0) -> None:
        self.calls = 0
        self.failures = failures
        self._lock = threading.Lock()  # judgements of two specs run in two threads at once

    def judge(self, spec: Any, salvage: bool = False) -> list[str]:
        with self._lock:
            self.calls += 1
            call = self.calls
        time.sleep(0.2)
        if call <= self.failures:
            raise PreflightError("the pre-flight helper exited with code 1")
        return [f"problem of {sorted(spec)}"]


def _controllers(judge: _CountingJudge) -> Controllers:
    return Controllers(kube=None, config=OperatorConfig(), metrics=None, judge=judge)  # type: ignore[arg-type]


async def test_copies_of_a_spec_judged_at_once_share_one_judgement() -> None:
    """A burst of identical jobs asks the helper once, not once per job behind its lock."""
    counting = _CountingJudge()
    c = _controllers(counting)
    answers = await asyncio.gather(*(c._judged(dict(VALID)) for _ in range(20)), c._judged(dict(TYPOS)))
    assert counting.calls == 2
    assert answers[:20] == [[f"problem of {sorted(VALID)}"]] * 20
    assert await c._judged(dict(VALID)) == answers[0] and counting.calls == 2  # from the cache


async def test_a_failed_shared_judgement_fails_every_waiter_and_the_next_reconcile_asks_again() -> None:
    counting = _CountingJudge(failures=1)
    c = _controllers(counting)
    answers = await asyncio.gather(*(c._judged(dict(VALID)) for _ in range(5)), return_exceptions=True)
    assert all(isinstance(a, PreflightError) for a in answers) and counting.calls == 1
    assert await c._judged(dict(VALID)) == [f"problem of {sorted(VALID)}"] and counting.calls == 2
