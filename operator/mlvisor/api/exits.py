"""How mlvisor's processes end: exit codes and the termination message, a contract between each
process and its supervisor.

The trainer and the model server run as containers (or, under ``mlvisor run``, as local
processes); the operator and the local runtime supervise them and read two things when one
ends: its exit code and its *termination message*. Kubernetes copies the file at the
container's ``terminationMessagePath`` (``/dev/termination-log``, at most 4096 bytes) into
``status.containerStatuses[].state.terminated.message``; the local runtime plays the same file
and names it in :data:`TERMINATION_MESSAGE_ENV`. A failed process writes its reason there, as a
:class:`TerminationMessage` (``"<kind>: <reason>"``); a trainer that wrote an artifact writes a
:class:`TerminationSummary`, which is how status.model gets its metrics without the operator
reading the artifact volume.

Every pod mlvisor builds has ``terminationMessagePolicy: FallbackToLogsOnError``: when a
container fails and its file is empty (a SIGKILL, a crash before our code ran), the kubelet (and
the local runtime, which plays it) reports the last lines of its log instead. Nothing in the pod
status says which of the two a message is, so the kinds are the mark: a failed container's
message that does not start with one of them is a log tail, never the process's reason (see
:func:`written_by_process`).
"""

from __future__ import annotations

import enum
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

#: Success.
EXIT_OK = 0
#: Anything unexpected (a crash); the traceback is in the log. Worth a restart.
EXIT_CRASH = 1
#: The trainer's spec or data is invalid: retrying cannot help (the default failurePolicy fails
#: the job at once). The reason is the termination message.
EXIT_INVALID_SPEC = 2
#: The model server's model can never be loaded (checksum, untrusted type, shape, warm-up
#: error): not worth a restart either; the ModelServer rolls back or fails.
EXIT_MODEL_UNLOADABLE = 4
#: 128 + signal: how a container runtime reports a process killed by a signal.
EXIT_SIGTERM = 128 + 15
EXIT_SIGKILL = 128 + 9

#: Where a container's termination message goes (the Kubernetes default terminationMessagePath).
TERMINATION_LOG = "/dev/termination-log"
#: Overrides that path (the local runtime sets it; in a pod the default applies).
TERMINATION_MESSAGE_ENV = "MLVISOR_TERMINATION_MESSAGE_PATH"
#: What a kubelet keeps of a termination message, in bytes.
MAX_TERMINATION_MESSAGE_BYTES = 4096
#: What a process writes at most, in characters (room for multi-byte characters).
MAX_MESSAGE_CHARS = 4000


def termination_message_path(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    return Path(env.get(TERMINATION_MESSAGE_ENV) or TERMINATION_LOG)


def write_termination_message(message: str, env: Mapping[str, str] | None = None) -> bool:
    """Write ``message`` (cut to the kubelet's limit) when the file exists; True if written.

    The file is written only when it exists: the kubelet (or the local runtime) creates it, and
    a process run by hand outside a pod never creates files in /dev.
    """
    path = termination_message_path(env)
    if not path.is_file():
        return False
    try:
        path.write_text(message[:MAX_MESSAGE_CHARS])
    except OSError:
        return False
    return True


class TerminationKind(enum.StrEnum):
    """What a failed mlvisor process says it is; the first words of its termination message."""

    INVALID_SPEC = "invalid spec"
    """The trainer refused its spec or data (exit 2)."""
    CRASH = "crash"
    """The trainer met an unexpected exception (exit 1); the traceback is in the log."""
    MODEL_UNLOADABLE = "cannot load the model"
    """The server's model can never load (exit 4)."""
    NOT_READY = "not ready"
    """The server was told to stop before its model was ready; the reason is what it was doing
    (``waiting for the model: ...``, ``loading the model from ...``). Written when the signal
    arrives, so a startupProbe kill reports why the server was not ready."""


@dataclass(frozen=True)
class TerminationMessage:
    """The termination message of a failed process: ``"<kind>: <reason>"``, e.g.
    ``invalid spec: spec.estimator.class ...`` or ``not ready: waiting for the model: ...``."""

    kind: TerminationKind
    reason: str

    def to_message(self) -> str:
        return f"{self.kind.value}: {self.reason}"

    @classmethod
    def parse(cls, message: str | None) -> TerminationMessage | None:
        """The message a process wrote; None for anything else (a log tail, a summary, nothing)."""
        text = (message or "").strip()
        for kind in TerminationKind:
            prefix = f"{kind.value}: "
            if text.startswith(prefix):
                return cls(kind, text[len(prefix):].strip())
        return None


def written_by_process(message: str | None, exit_code: int | None) -> bool:
    """Whether a container's termination message is the process's own words, not a log tail.

    FallbackToLogsOnError uses the log only when the container failed: after exit 0 the message
    is always the file's (a trainer's summary). After a failure it is the process's only when it
    is a :class:`TerminationMessage`.
    """
    if not message or not message.strip():
        return False
    return exit_code == EXIT_OK or TerminationMessage.parse(message) is not None


class TerminationSummary(BaseModel):
    """What a trainer that wrote an artifact says as it exits 0: the part of its metadata.json
    that status.model shows. Compact JSON (snake_case) within the kubelet's 4096 bytes."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    version: str
    """The artifact version written."""
    metrics: dict[str, float] = {}
    """Held-out metrics."""
    score_name: str | None = None
    """Which metric is the headline score (a key of metrics)."""
    best_params: dict[str, Any] | None = None
    """Best parameters of a search; left out when they would not fit."""
    sklearn_version: str | None = None
    """scikit-learn version that trained the model."""
    data: str | None = None
    """What the trainer read of a table: rows, categorical columns and their encoding, columns with
    missing values (cut to fit)."""

    def to_message(self) -> str:
        """The termination message: compact JSON; best_params dropped, then data cut, if they would not fit."""
        text = self.model_dump_json(exclude_none=False)
        if len(text) > MAX_MESSAGE_CHARS:
            text = self.model_copy(update={"best_params": None}).model_dump_json()
        if len(text) > MAX_MESSAGE_CHARS and self.data:
            room = max(0, len(self.data) - (len(text) - MAX_MESSAGE_CHARS) - 3)
            text = self.model_copy(update={"best_params": None, "data": self.data[:room] + "..."}).model_dump_json()
        return text

    @classmethod
    def from_message(cls, message: str | None) -> TerminationSummary | None:
        """The summary in a termination message; None for any other message (a reason, a log tail)."""
        if not message or not message.lstrip().startswith("{"):
            return None
        try:
            data = json.loads(message)
        except ValueError:
            return None
        if not isinstance(data, dict):
            return None
        data["metrics"] = {k: v for k, v in (data.get("metrics") or {}).items()
                           if isinstance(v, int | float) and not isinstance(v, bool) and v == v and abs(v) != float("inf")}
        try:
            return cls.model_validate(data)
        except ValidationError:
            return None
