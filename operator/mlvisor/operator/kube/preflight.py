"""The operator's pre-flight judge, in a helper process that lives only while there is work.

The judge (:func:`mlvisor.trainer.preflight.spec_problems`, the one ``mlvisor validate``, ``mlvisor
run`` and the trainer use) needs scikit-learn, numpy and pandas: about 110 MB that a long-running
operator would otherwise keep for ever, for a check it makes once per new TrainingJob generation.
So the operator never imports them: :class:`PreflightJudge` starts ``python -m
mlvisor.operator.kube.preflight`` (this module's :func:`main`, the same interpreter and
installation) on the first spec to judge, sends it specs one JSON line at a time and reads one
JSON line back each, and closes its stdin once no spec has come for ``idle_seconds`` (the helper
then exits): a burst of new jobs pays for the import once, an idle operator holds none of it.

The helper judges exactly as the operator did in-process: the raw ``spec`` of the resource parsed
by the same model (``api.TrainingJobSpec``), or, for a spec whose schema is wrong somewhere, the
parts of it that are valid (``SpecParts.salvage``); the same words come back.

Protocol, one JSON object per line: request ``{"spec": {...}, "salvage": false}``; answer
``{"problems": [...]}``, ``{"unavailable": "why"}`` (scikit-learn is not installed: the trainer
judges in its pod, as before) or ``{"error": "what"}`` (the judge raised; its traceback is on the
helper's stderr, which is the operator's).
"""

from __future__ import annotations

import json
import logging
import os
import select
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from typing import IO, Any

logger = logging.getLogger(__name__)

#: The helper exits after this long without a spec to judge.
IDLE_SECONDS = 30.0
#: The longest a judgement may take, the helper's start (importing scikit-learn) included.
TIMEOUT_SECONDS = 120.0


class PreflightError(RuntimeError):
    """The helper failed (died, timed out, or the judge raised): the reconcile is retried."""


class PreflightJudge:
    """A client of the helper process; thread-safe, blocking (call it from a thread)."""

    def __init__(
        self,
        idle_seconds: float = IDLE_SECONDS,
        timeout_seconds: float = TIMEOUT_SECONDS,
        command: Sequence[str] | None = None,
    ) -> None:
        self.idle_seconds = idle_seconds
        self.timeout_seconds = timeout_seconds
        self.command = list(command or (sys.executable, "-m", __name__))
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._last_used = 0.0
        self._reaper: threading.Timer | None = None
        self._unavailable_logged = False
        self.started = 0  # helper processes started, for the logs and the tests

    @property
    def pid(self) -> int | None:
        """The helper's pid while it runs, else None."""
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def judge(self, spec: Any, salvage: bool = False) -> list[str]:
        """The judge's problems of a raw spec (``salvage``: of its valid parts); [] if it cannot judge."""
        with self._lock:
            answer = self._ask({"spec": spec, "salvage": salvage})
            self._last_used = time.monotonic()
            self._arm_reaper()
        if "problems" in answer:
            return [str(p) for p in answer["problems"]]
        if "unavailable" in answer:
            if not self._unavailable_logged:
                self._unavailable_logged = True
                logger.warning("no pre-flight check of TrainingJob specs (%s): the trainer judges them in their pod",
                               answer["unavailable"])
            return []
        raise PreflightError(f"the pre-flight judge failed: {answer.get('error', answer)}")

    def close(self) -> None:
        """Stop the helper now (the operator stops)."""
        with self._lock:
            if self._reaper is not None:
                self._reaper.cancel()
                self._reaper = None
            self._stop_helper()

    # ------------------------------------------------------------------ inside the lock

    def _ask(self, request: Mapping[str, Any]) -> dict[str, Any]:
        proc = self._proc if self._proc is not None and self._proc.poll() is None else self._start()
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write(json.dumps(request).encode() + b"\n")
            proc.stdin.flush()
            line = self._read_line(proc.stdout)
        except (OSError, TimeoutError, ValueError) as e:
            self._stop_helper()
            raise PreflightError(f"the pre-flight helper failed: {e}") from e
        if not line:
            code = proc.wait()
            self._proc = None
            raise PreflightError(f"the pre-flight helper exited with code {code} (its stderr is in this log)")
        answer = json.loads(line)
        if not isinstance(answer, dict):
            raise PreflightError(f"the pre-flight helper answered {line[:200]!r}")
        return answer

    def _read_line(self, out: IO[bytes]) -> bytes:
        ready, _, _ = select.select([out], [], [], self.timeout_seconds)
        if not ready:
            raise TimeoutError(f"no answer within {self.timeout_seconds:g} s")
        return out.readline()  # the helper writes each answer as one line, at once

    def _start(self) -> subprocess.Popen[bytes]:
        self._proc = subprocess.Popen(self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
        self.started += 1
        logger.info("pre-flight helper started (pid %d)", self._proc.pid)
        return self._proc

    def _stop_helper(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            if proc.stdin is not None:
                proc.stdin.close()  # end of input: the helper exits
            proc.wait(10)
        except (OSError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait()
        finally:
            if proc.stdout is not None:
                proc.stdout.close()

    def _arm_reaper(self) -> None:
        if self._reaper is not None:
            return
        self._reaper = threading.Timer(self.idle_seconds, self._reap)
        self._reaper.daemon = True
        self._reaper.start()

    def _reap(self) -> None:
        with self._lock:
            self._reaper = None
            idle = time.monotonic() - self._last_used
            if idle >= self.idle_seconds:
                if self._proc is not None:
                    logger.info("pre-flight helper stopped after %.0f s without work", idle)
                self._stop_helper()
            else:
                self._reaper = threading.Timer(self.idle_seconds - idle, self._reap)
                self._reaper.daemon = True
                self._reaper.start()


# ---------------------------------------------------------------------- the helper process


def main() -> int:
    """Judge one spec per line of stdin, answer one line each on stdout, until stdin ends."""
    answers = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)  # whatever else is printed (a library's warning) goes to stderr, never into the answers
    unavailable: str | None = None
    try:
        from mlvisor import api
        from mlvisor.trainer.preflight import SpecParts, spec_problems
    except ImportError as e:  # an operator image without the trainer's libraries
        unavailable = str(e)
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            request = json.loads(line)
            if unavailable is not None:
                answer: dict[str, Any] = {"unavailable": unavailable}
            else:
                spec = request["spec"]
                judged = SpecParts.salvage(spec) if request.get("salvage") else api.TrainingJobSpec.model_validate(spec)
                answer = {"problems": list(spec_problems(judged))}
        except Exception as e:  # said on stderr in full, and to the operator in one line
            import traceback

            traceback.print_exc()
            answer = {"error": f"{type(e).__name__}: {e}"}
        answers.write(json.dumps(answer) + "\n")
        answers.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
