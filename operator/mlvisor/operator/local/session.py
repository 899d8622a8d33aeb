"""One `mlvisor run`: the runtime, the view, signals, and when to stop with which exit code.

Kept apart from the runtime so the control loop knows nothing about terminals, signals or
exit codes, and apart from the CLI so argument parsing stays import-free.

When it ends:
- Ctrl-C / SIGTERM / SIGHUP: stop every child (SIGTERM to each process group, SIGKILL after
  the grace period, at once on a second Ctrl-C), write the final status, exit 130 / 143 / 129.
- ``--exit-after-ready`` / ``--predict``: once every TrainingJob is finished, every
  ModelServer is settled (Ready, RolledBack or Failed) and every ModelPipeline is settled
  (Serving, Failed, or Pending with no run left to wait for), check that each Ready server
  answers (V2 model-ready, then the --predict request) and exit 0 only if every job of no
  pipeline succeeded, every server is Ready and answered and every pipeline is Serving. (A
  pipeline's own runs may fail: restarting them is the pipeline's job.)
- Otherwise it keeps running, like resources applied to a cluster, except when nothing can
  make progress any more: every TrainingJob finished, no ModelServer can serve (there is
  none, or each failed or waits on a job that failed) and every pipeline failed with nothing
  served. Then it exits with the summary.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlvisor import api
from mlvisor.operator.local.kubelet import KubeletSettings
from mlvisor.operator.local.runtime import LocalRuntime, RunSettings
from mlvisor.operator.local.view import TerminalView
from mlvisor.operator.supervision import KUBELET_BACKOFF, CrashLoopBackOff

TERMINAL_JOB_PHASES = ("Succeeded", "Failed")
SETTLED_SERVER_PHASES = ("Ready", "RolledBack", "Failed")
SETTLED_PIPELINE_PHASES = ("Serving", "Failed")
#: Ctrl-C, kill, a closed terminal: each stops every child; exit code 128 + signal number.
HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@dataclass
class SessionOptions:
    files: list[Path]
    data_dir: Path
    status_file: Path | None = None
    pid_file: Path | None = None
    exit_after_ready: bool = False
    predict: Path | None = None
    timeout: float | None = None
    table: bool = True
    env: dict[str, str] = field(default_factory=dict)
    wrappers: dict[str, tuple[str, ...]] = field(default_factory=dict)
    python: str = ""
    restart_delay: float | None = None
    """A fixed wait before every in-place restart of a server container; None: the kubelet's back-off."""


def _http(method: str, url: str, body: bytes | None = None, timeout: float = 10.0) -> tuple[int, str]:
    req = urllib.request.Request(url, data=body, method=method,
                                 headers={"content-type": "application/json"} if body else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")
    except OSError as e:
        return 0, str(e)


def _condition_message(status: dict[str, Any], phase: str) -> str:
    for c in status.get("conditions") or []:
        if c.get("type") == phase and c.get("message"):
            return str(c["message"])
    return ""


def _why(status: dict[str, Any], phase: str, kind: str) -> str:
    """The condition that explains a resource that is not where it should be."""
    if phase in ("Failed", "RolledBack"):
        return _condition_message(status, phase)
    if kind == "ModelServer":
        for c in status.get("conditions") or []:
            if c.get("type") == "Ready" and c.get("status") != "True":
                return str(c.get("message") or "")
    return ""


class Session:
    def __init__(
        self, options: SessionOptions, resources: list[api.TrainingJob | api.ModelServer | api.ModelPipeline],
        secrets: dict[tuple[str, str], dict[str, str]] | None = None,
    ) -> None:
        self.options = options
        self.resources = resources
        self.secrets = secrets or {}
        self.view = TerminalView(options.table, options.status_file, options.pid_file)
        kwargs: dict[str, Any] = {}
        if options.python:
            kwargs["python"] = options.python
        self.runtime = LocalRuntime(
            options.files,
            RunSettings(
                data_dir=options.data_dir,
                extra_env=options.env,
                wrappers=options.wrappers,
                kubelet=KubeletSettings(backoff=KUBELET_BACKOFF if options.restart_delay is None
                                        else CrashLoopBackOff.fixed(options.restart_delay)),
                **kwargs,
            ),
            reporter=self.view,
        )
        self._changed = asyncio.Event()
        self._signal: int | None = None

    def main(self) -> int:
        return asyncio.run(self._main())

    async def _main(self) -> int:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()

        def on_signal(sig: int) -> None:
            if self._signal is None:
                self._signal = sig
                self.view.say(f"{signal.Signals(sig).name}: stopping every process (again to kill them now)...")
            else:
                self.runtime.kill_all()  # a second Ctrl-C: no more grace
            stop.set()

        for sig in HANDLED_SIGNALS:
            loop.add_signal_handler(sig, on_signal, sig)
        original_changed = self.view.changed

        def changed(runtime: LocalRuntime) -> None:
            original_changed(runtime)
            self._changed.set()

        self.view.changed = changed  # type: ignore[method-assign]
        self.runtime.load(self.resources, self.secrets)
        self.view.say(
            f"mlvisor run: {len(self.resources)} resource(s); data in {self.options.data_dir}, "
            f"logs in {self.options.data_dir / 'logs'}; Ctrl-C stops everything"
        )
        loop_task = asyncio.create_task(self.runtime.run(done=lambda: False, stop=stop))
        code, summary = 1, ["stopped"]
        try:
            code, summary = await self._outcome(stop, loop_task)
        finally:
            stop.set()
            await asyncio.gather(loop_task, return_exceptions=True)
            await self.runtime.shutdown()
            self.view.changed(self.runtime)
            for sig in HANDLED_SIGNALS:
                loop.remove_signal_handler(sig)
        self.view.finish(summary)
        return code

    def _summary(self) -> tuple[bool, list[str]]:
        """(everything went well, one line per resource); for what did not, why and where its log is."""
        ok = True
        lines = []
        for key in sorted(self.runtime.resources, key=lambda k: (k[0] != "TrainingJob", k)):
            kind, ns, name = key
            status = self.view.doc.get("/".join(key)) or {}
            phase = status.get("phase", "Pending")
            line = f"{kind} {ns}/{name}: {phase}"
            owned = key in self.runtime.owners
            if kind == "TrainingJob":
                model = status.get("model") or {}
                if model.get("metrics"):
                    line += " (" + ", ".join(f"{k}={v:.3f}" for k, v in sorted(model["metrics"].items())) + ")"
                good = phase == "Succeeded" or owned  # a pipeline's failed run is the pipeline's to judge
            elif kind == "ModelPipeline":
                if status.get("servingRun"):
                    line += f", serving {status['servingRun']} (version {status.get('servingVersion')}"
                    if status.get("servingScore") is not None:
                        line += f", score {status['servingScore']:.3f}"
                    line += ")"
                if status.get("url"):
                    line += f" at {status['url']}"
                good = phase == "Serving"
            else:
                if status.get("url"):
                    line += f" at {status['url']} (model version {status.get('modelVersion')})"
                if status.get("grpcAddress"):
                    line += f", gRPC at {status['grpcAddress']}"
                good = phase == "Ready"
            message = "" if good else _why(status, phase, kind)
            if message:
                line += f": {message}"
            lines.append(line)
            log = self.runtime.failure_log(key, self.runtime.statuses.get(key))
            if log is not None and (not good or phase == "RolledBack"):
                lines.append(f"    log of {(status.get('supervision') or {}).get('lastFailure', {}).get('pod')}: {log}")
            ok = ok and good
        return ok, lines

    def _phases(self) -> tuple[dict[str, str], dict[str, str]]:
        jobs: dict[str, str] = {}
        servers: dict[str, str] = {}
        for key in self.runtime.resources:
            if key[0] not in ("TrainingJob", "ModelServer"):
                continue
            name = "/".join(key)
            phase = (self.view.doc.get(name) or {}).get("phase", "Pending")
            (jobs if key[0] == "TrainingJob" else servers)[name] = phase
        return jobs, servers

    def _pipelines(self) -> dict[str, dict[str, Any]]:
        return {"/".join(k): self.view.doc.get("/".join(k)) or {} for k in self.runtime.resources if k[0] == "ModelPipeline"}

    def _pipelines_settled(self) -> bool:
        for status in self._pipelines().values():
            phase = status.get("phase", "Pending")
            waiting = (
                phase == "Pending"
                and status.get("runs")
                and not any(r.get("phase") in ("Pending", "Running") for r in status["runs"])
                and not (status.get("supervision") or {}).get("pending")
            )
            if phase not in SETTLED_PIPELINE_PHASES and not waiting:
                return False
        return True

    def _stuck(self) -> bool:
        """Nothing can progress: every job finished and no server can ever serve."""
        jobs, servers = self._phases()
        if any(p not in TERMINAL_JOB_PHASES for p in jobs.values()):
            return False
        for status in self._pipelines().values():
            ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
            if status.get("phase") != "Failed" or ready:
                return False
        for key, phase in servers.items():
            if phase == "Failed":
                continue
            server = self.runtime.resources.get(tuple(key.split("/", 2)))  # type: ignore[arg-type]
            ref = getattr(getattr(getattr(server, "spec", None), "model", None), "training_job_ref", None)
            if ref is not None and jobs.get(f"TrainingJob/{key.split('/')[1]}/{ref.name}", "Missing") in (
                "Failed",
                "Missing",
            ):
                continue
            return False
        return True

    async def _outcome(self, stop: asyncio.Event, loop_task: asyncio.Task[None]) -> tuple[int, list[str]]:
        deadline = None if self.options.timeout is None else time.monotonic() + self.options.timeout
        while True:
            if self.runtime.steps == 0 and not (stop.is_set() or loop_task.done()):
                # Nothing is known before the first reconcile: "no status yet" is not "ready".
                stopped = asyncio.ensure_future(stop.wait())
                await asyncio.wait([loop_task, stopped], timeout=0.05, return_when=asyncio.FIRST_COMPLETED)
                stopped.cancel()
                continue
            if stop.is_set() or loop_task.done():
                if loop_task.done() and loop_task.exception() is not None:
                    raise loop_task.exception()  # type: ignore[misc]
                _, lines = self._summary()
                if self._signal is not None:
                    name = signal.Signals(self._signal).name
                    return 128 + self._signal, [f"stopped by {name}; last status of each resource:", *lines]
                return 1, lines
            if deadline is not None and time.monotonic() >= deadline and self.options.exit_after_ready:
                _, lines = self._summary()
                return 1, [*lines, f"timed out after {self.options.timeout:g}s before every resource was ready"]
            jobs, servers = self._phases()
            jobs_done = all(p in TERMINAL_JOB_PHASES for p in jobs.values())
            if (
                self.options.exit_after_ready
                and jobs_done
                and self._pipelines_settled()
                and (all(p in SETTLED_SERVER_PHASES for p in servers.values()) or self._stuck())
            ):
                return await self._check_servers()
            if self._stuck():
                ok, lines = self._summary()
                return (0 if ok else 1), lines
            self._changed.clear()
            wait = [asyncio.ensure_future(self._changed.wait()), asyncio.ensure_future(stop.wait())]
            timeout = 1.0 if deadline is None else max(0.0, min(1.0, deadline - time.monotonic()))
            await asyncio.wait([*wait, loop_task], timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            for w in wait:
                w.cancel()

    async def _check_servers(self) -> tuple[int, list[str]]:
        ok, lines = self._summary()
        body = self.options.predict.read_bytes() if self.options.predict is not None else None
        for key, status in self.view.doc.items():
            if not key.startswith("ModelServer/") or status.get("phase") != "Ready" or not status.get("url"):
                continue
            url = status["url"]
            code, text = await asyncio.to_thread(_http, "GET", f"{url}/ready")
            if code != 200:
                ok = False
                lines.append(f"{key}: GET {url}/ready answered {code or 'nothing'}: {text[:300]}")
                continue
            if body is not None:
                code, text = await asyncio.to_thread(_http, "POST", f"{url}/infer", body)
                if code != 200:
                    ok = False
                    lines.append(f"{key}: POST {url}/infer answered {code or 'nothing'}: {text[:500]}")
                else:
                    try:
                        text = json.dumps(json.loads(text))
                    except ValueError:
                        pass
                    lines.append(f"{key}: prediction: {text}")
        return (0 if ok else 1), lines
