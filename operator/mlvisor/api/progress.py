"""A search worker's progress report: what the trainer says about its trials and the supervisors read.

One JSON document, produced by the trainer (``mlvisor.trainer.progress``) and consumed by the
planners (``status.progress`` of a TrainingJob, ``mlvisor run``'s table), through two channels:

- **while the worker runs**: ``GET /progress`` on the worker's progress port
  (:data:`PROGRESS_PORT`, the container port named :data:`PROGRESS_PORT_NAME`), which each
  shell polls for the running search workers of a job every few seconds;
- **when it has finished**: the worker's termination message, so the final numbers reach the
  status even if the worker finished between two polls.

Both carry the same :class:`ProgressReport`. It says what *this worker* did (its trials done,
stopped early, its share of a Grid or Random search) and the best trials it knows of (its own;
for a Bayesian search, the whole study's, which every worker reads), so a supervisor adds the
workers' counts and merges their best trials. Pure: pydantic only.
"""

from __future__ import annotations

import json
import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mlvisor.api.exits import MAX_MESSAGE_CHARS

#: The container port a search worker serves ``GET /progress`` on (a pod has its own network
#: namespace; ``mlvisor run`` gives each worker process a free port instead).
PROGRESS_PORT = 8090
#: Name of that container port in the worker pod spec.
PROGRESS_PORT_NAME = "progress"
#: The path of the report.
PROGRESS_PATH = "/progress"
#: Environment of a worker: the port (and host) to serve the report on; unset: no endpoint.
PROGRESS_PORT_ENV = "MLVISOR_PROGRESS_PORT"
PROGRESS_HOST_ENV = "MLVISOR_PROGRESS_HOST"
#: How many of the best trials a report and status.progress keep.
TOP_TRIALS = 5
#: The value of ``kind`` that tells a report from any other JSON termination message.
REPORT_KIND: Literal["mlvisor.dev/search-progress"] = "mlvisor.dev/search-progress"


class TrialBrief(BaseModel):
    """One finished trial, as reports and status.progress.topTrials show it."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    trial: int = Field(ge=0)
    score: float
    params: dict[str, Any] = {}
    worker: int | None = None


class ProgressReport(BaseModel):
    """What one search worker says about its progress (see the module docstring)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    kind: Literal["mlvisor.dev/search-progress"] = "mlvisor.dev/search-progress"
    worker: int | None = None
    """The worker index (its shard, for Grid and Random)."""
    trials_done: int = Field(0, ge=0)
    """Trials this worker finished, over all its attempts (stopped early and failed ones included)."""
    trials_total: int | None = Field(None, ge=0)
    """Grid and Random: the trials of this worker's shard. Bayesian: None (the study decides who runs what)."""
    trials_pruned: int = Field(0, ge=0)
    """Of trials_done, those stopped early."""
    study_done: int | None = Field(None, ge=0)
    """Bayesian: trials finished in the whole study when the worker last looked."""
    study_total: int | None = Field(None, ge=0)
    """Bayesian: nTrials."""
    top: list[TrialBrief] = Field(default_factory=list, max_length=TOP_TRIALS)
    """The best trials this worker knows of, best first (Bayesian: the study's)."""
    eta_seconds: float | None = Field(None, ge=0)
    """The worker's estimate of the seconds until its last trial finishes."""
    scoring: str | None = None
    """The scorer of the scores."""
    finished: bool = False
    """True in the final report (the termination message of a worker that exited 0)."""

    def to_message(self) -> str:
        """Compact JSON within a termination message's limit (the worst trials go first if need be)."""
        report = self
        text = report.model_dump_json()
        while len(text) > MAX_MESSAGE_CHARS and report.top:
            report = report.model_copy(update={"top": report.top[:-1]})
            text = report.model_dump_json()
        return text

    @classmethod
    def from_message(cls, message: str | bytes | None) -> ProgressReport | None:
        """The report in a termination message or a ``GET /progress`` body; None for anything else."""
        if not message:
            return None
        if isinstance(message, bytes):
            message = message.decode(errors="replace")
        if not message.lstrip().startswith("{"):
            return None
        try:
            data = json.loads(message)
        except ValueError:
            return None
        if not isinstance(data, dict) or data.get("kind") != REPORT_KIND:
            return None
        data["top"] = [t for t in data.get("top") or [] if isinstance(t, dict) and _finite(t.get("score"))]
        try:
            return cls.model_validate(data)
        except ValidationError:
            return None


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def better(a: TrialBrief, b: TrialBrief) -> bool:
    """The search's order: a higher score, ties going to the lower trial number."""
    return (-a.score, a.trial) < (-b.score, b.trial)


def merge_top(*lists: list[TrialBrief], limit: int = TOP_TRIALS) -> list[TrialBrief]:
    """The best ``limit`` trials of several lists, one entry per trial number, best first."""
    seen: dict[int, TrialBrief] = {}
    for entries in lists:
        for t in entries:
            if _finite(t.score) and t.trial not in seen:
                seen[t.trial] = t
    return sorted(seen.values(), key=lambda t: (-t.score, t.trial))[:limit]
