"""Serving benchmark: mlvisor vs MLServer on the same model, payload, host and load generator.

Usage (from the repository root):

    .venv/bin/python bench/serving.py [--duration 10] [--rounds 3] [--write-readme]

The gRPC rows need ``ghz`` (``go install github.com/bojand/ghz/cmd/ghz@v0.120.0``); without it
they are left out and the run says so.

What it does:

1. Makes sure the peers exist: MLServer 1.7.1 + mlserver-sklearn in its own virtual
   environment (``bench/.mlserver-venv``; it pins an older FastAPI and needs ``uvloop<0.20``),
   and ``wrk`` (``apt-get install -y wrk``).
2. Trains RandomForestClassifier(n_estimators=100, random_state=0) and LogisticRegression on
   iris, writes each as an mlvisor artifact (skops) and as an MLServer model (joblib of the
   *same* fitted object).
3. Starts both servers (one model at a time), adaptive batching on with the same limits
   (64 rows, 5 ms), and drives them with wrk (1 thread, one single-row V2 infer body asking
   for ``predict``, read from the same file) at concurrency 1, 8, 32, 128, alternating the two
   servers point by point and round by round. Each point: 2 s warm-up, then ``--duration`` s.
   Then, at one concurrency each (``--protocol-concurrency``, default 32): mlvisor with binary
   tensor data over HTTP (request and ``predict`` output binary) against MLServer's JSON REST
   (MLServer has no binary extension); both servers over V2 gRPC, driven by ghz with the same
   ModelInfer message (``fp64_contents``); and a large-request row, 1,000 rows per JSON request
   at ``--large-concurrency`` (default 8), reported in rows/s.
4. Prints a table of req/s and p50/p99 latency (median over rounds) and the ratios, saves the
   raw numbers in ``bench/results/``, and with ``--write-readme`` replaces the table in
   bench/README.md between the ``serving:begin``/``serving:end`` markers.

With ``--against REF`` it measures a change instead: mlvisor at git ``REF`` (``git archive``
into the run's folder, put first on PYTHONPATH) against mlvisor of the working tree, same
artifact and body, alternating arm by arm and round by round, single-row V2 JSON at each
``--concurrency``; the working tree is also asked by column name (one ``[1]`` FP64 input per
feature, what a pandas-codec client sends), and, with ``--table``, a census-like Pipeline
(ColumnTransformer with imputers and a OneHotEncoder, then the same forest) is served and
asked by column name with strings and nulls. The table goes between the
``serving-change:begin``/``serving-change:end`` markers with ``--write-readme``.

Not a test: numbers depend on the machine (both servers and wrk share its cores).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
MLSERVER_VENV = BENCH / ".mlserver-venv"
MLSERVER_PINS = ["mlserver==1.7.1", "mlserver-sklearn==1.7.1", "uvloop<0.20"]
RESULTS = BENCH / "results"
LUA = BENCH / "wrk_v2.lua"
CONCURRENCY = (1, 8, 32, 128)
MAX_BATCH_SIZE = 64
MAX_LATENCY_MS = 5
ROW = [5.1, 3.5, 1.4, 0.2]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- peers
def ensure_mlserver() -> Path:
    exe = MLSERVER_VENV / "bin" / "mlserver"
    if exe.exists():
        return exe
    import sklearn

    log(f"installing {' '.join(MLSERVER_PINS)} into {MLSERVER_VENV}")
    subprocess.run([sys.executable, "-m", "venv", str(MLSERVER_VENV)], check=True)
    pip = [str(MLSERVER_VENV / "bin" / "pip"), "install", "-q"]
    # the same scikit-learn as ours, so the joblib file unpickles to the same model
    subprocess.run(pip + MLSERVER_PINS + [f"scikit-learn=={sklearn.__version__}"], check=True)
    return exe


def ensure_wrk() -> str:
    wrk = shutil.which("wrk")
    if wrk:
        return wrk
    log("installing wrk with apt-get")
    if subprocess.run(["apt-get", "install", "-y", "wrk"], capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update"], check=True, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "wrk"], check=True, capture_output=True)
    wrk = shutil.which("wrk")
    assert wrk, "wrk is not installed"
    return wrk


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------- models
def prepare_models(work: Path) -> dict[str, dict]:
    """Fit each model once; write the mlvisor artifact and the MLServer model dir of the same object."""
    import joblib
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression

    sys.path.insert(0, str(REPO / "tests"))
    from helpers.artifacts import build_artifact  # the trainer's artifact format, written for tests too

    models = {
        "RandomForest(100)": RandomForestClassifier(n_estimators=100, random_state=0),
        "LogisticRegression": LogisticRegression(max_iter=1000),
    }
    out = {}
    for label, est in models.items():
        key = "rf" if label.startswith("Random") else "lr"
        path, fitted, _ = build_artifact(work / "mlvisor" / key, est, name=f"iris-{key}", version="v1")
        ms = work / "mlserver" / key / f"iris-{key}"  # one model per MLServer root
        ms.mkdir(parents=True)
        joblib.dump(fitted, ms / "model.joblib")
        (ms / "model-settings.json").write_text(json.dumps({
            "name": f"iris-{key}",
            "implementation": "mlserver_sklearn.SKLearnModel",
            "max_batch_size": MAX_BATCH_SIZE,
            "max_batch_time": MAX_LATENCY_MS / 1000,
            "parameters": {"uri": "./model.joblib", "version": "v1"},
        }))
        out[label] = {"key": key, "artifact": path, "mlserver_dir": ms, "name": f"iris-{key}"}
    return out


# ----------------------------------------------------------------------------- servers
class Proc:
    def __init__(self, name: str, argv: list[str], env: dict, url_ready: str, log_path: Path, cwd: Path) -> None:
        self.name, self.url_ready = name, url_ready
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; see {self._log.name}")
            try:
                with urllib.request.urlopen(self.url_ready, timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} not ready after {timeout}s; see {self._log.name}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self._log.close()


def start_mlvisor(m: dict, logs: Path) -> tuple[Proc, str, str]:
    port, grpc = free_port(), free_port()
    env = dict(os.environ, MLVISOR_MODEL_DIR=str(m["artifact"]), MLVISOR_HOST="127.0.0.1",
               MLVISOR_PORT=str(port), MLVISOR_GRPC_PORT=str(grpc), MLVISOR_MAX_BATCH_SIZE=str(MAX_BATCH_SIZE),
               MLVISOR_MAX_LATENCY_MS=str(MAX_LATENCY_MS), MLVISOR_LOG_LEVEL="warning")
    base = f"http://127.0.0.1:{port}"
    p = Proc("mlvisor", [sys.executable, "-m", "mlvisor.server"], env, base + "/v2/health/ready",
             logs / f"mlvisor-{m['key']}.log", REPO)
    return p, f"{base}/v2/models/{m['name']}/infer", f"127.0.0.1:{grpc}"


def start_mlvisor_at(m: dict, logs: Path, tree: Path | None, tag: str) -> tuple[Proc, str]:
    """mlvisor serving ``m`` from the working tree (``tree`` None) or from an exported tree."""
    port = free_port()
    env = dict(os.environ, MLVISOR_MODEL_DIR=str(m["artifact"]), MLVISOR_HOST="127.0.0.1",
               MLVISOR_PORT=str(port), MLVISOR_GRPC_PORT="0", MLVISOR_MAX_BATCH_SIZE=str(MAX_BATCH_SIZE),
               MLVISOR_MAX_LATENCY_MS=str(MAX_LATENCY_MS), MLVISOR_LOG_LEVEL="warning")
    if tree is not None:  # the exported roots first: `mlvisor` is a namespace package, first portion wins
        roots = [str(tree / r) for r in ("operator", "server", "trainer")]
        env["PYTHONPATH"] = os.pathsep.join(roots + [p for p in [os.environ.get("PYTHONPATH")] if p])
    base = f"http://127.0.0.1:{port}"
    p = Proc(f"mlvisor-{tag}", [sys.executable, "-m", "mlvisor.server"], env, base + "/v2/health/ready",
             logs / f"mlvisor-{tag}-{m['key']}.log", REPO)
    return p, f"{base}/v2/models/{m['name']}/infer"


def start_mlserver(m: dict, exe: Path, logs: Path) -> tuple[Proc, str, str]:
    port, grpc, mport = free_port(), free_port(), free_port()
    root = m["mlserver_dir"].parent
    (root / "settings.json").write_text(json.dumps({
        "http_port": port, "grpc_port": grpc, "metrics_port": mport, "metrics_endpoint": None,
        "host": "127.0.0.1", "debug": False, "logging_level": "WARNING",
    }))
    env = dict(os.environ, PATH=f"{exe.parent}:{os.environ['PATH']}")
    base = f"http://127.0.0.1:{port}"
    p = Proc("mlserver", [str(exe), "start", str(root)], env, f"{base}/v2/models/{m['name']}/ready",
             logs / f"mlserver-{m['key']}.log", root)
    return p, f"{base}/v2/models/{m['name']}/infer", f"127.0.0.1:{grpc}"


# ----------------------------------------------------------------------------- load
def run_wrk(wrk: str, url: str, body_file: Path, conc: int, seconds: float, header_length: int | None = None) -> dict:
    argv = [wrk, "-t1", f"-c{conc}", f"-d{max(1, round(seconds))}s", "--timeout", "10s", "-s", str(LUA), url]
    env = dict(os.environ, WRK_BODY_FILE=str(body_file), WRK_HEADER_LENGTH=str(header_length or ""))
    out = subprocess.run(argv, env=env, capture_output=True, text=True, check=True).stdout
    line = next(ln for ln in out.splitlines() if ln.startswith("WRK_JSON "))
    r = json.loads(line[len("WRK_JSON "):])
    r["rps"] = r["requests"] / (r["duration_us"] / 1e6)
    r["errors"] = r["connect_errors"] + r["read_errors"] + r["write_errors"] + r["timeouts"] + r["non2xx"]
    return r


def ghz_path() -> str | None:
    found = shutil.which("ghz")
    if found:
        return found
    gopath = Path(os.environ.get("GOPATH", Path.home() / "go")) / "bin" / "ghz"
    return str(gopath) if gopath.exists() else None


def grpc_request_file(work: Path) -> tuple[Path, Path]:
    """(protoset, serialized ModelInferRequest) for ghz: the official descriptor and one request."""
    from google.protobuf import descriptor_pb2

    from mlvisor.server.grpc_stubs import open_inference_grpc_pb2 as pb

    fd = descriptor_pb2.FileDescriptorProto()
    pb.DESCRIPTOR.CopyToProto(fd)
    protoset = work / "oip.protoset"
    protoset.write_bytes(descriptor_pb2.FileDescriptorSet(file=[fd]).SerializeToString())
    return protoset, work / "grpc-request.bin"


def write_grpc_request(path: Path, name: str, rows: list[list[float]]) -> bytes:
    from mlvisor.server.grpc_stubs import open_inference_grpc_pb2 as pb

    req = pb.ModelInferRequest(model_name=name)
    t = req.inputs.add(name="input-0", datatype="FP64", shape=[len(rows), len(rows[0])])
    t.contents.fp64_contents.extend(v for row in rows for v in row)
    req.outputs.add(name="predict")
    data = req.SerializeToString()
    path.write_bytes(data)
    return data


def run_ghz(ghz: str, target: str, protoset: Path, request: Path, conc: int, seconds: float) -> dict:
    argv = [ghz, "--insecure", "--protoset", str(protoset), "--call", "inference.GRPCInferenceService/ModelInfer",
            "-B", str(request), "-c", str(conc), "--connections", "1", "-z", f"{max(1, round(seconds))}s",
            "--timeout", "10s", "--format", "json", "--skipFirst", "0", target]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    r = json.loads(out)
    lat = {d["percentage"]: d["latency"] / 1000 for d in r.get("latencyDistribution") or []}
    ok = (r.get("statusCodeDistribution") or {}).get("OK", 0)
    total = r.get("count", 0)
    # ghz closes its connection when the duration ends; the calls then in flight (at most
    # `conc`) fail with "use of closed network connection": the load generator's, not errors.
    cut = sum(n for msg, n in (r.get("errorDistribution") or {}).items() if "use of closed network connection" in msg)
    cut = min(cut, conc)
    return {"requests": ok, "rps": ok / (r["total"] / 1e9), "p50_us": lat.get(50, 0), "p99_us": lat.get(99, 0),
            "errors": total - ok - cut, "cut_at_end": cut, "duration_us": r["total"] / 1000,
            "error_kinds": r.get("errorDistribution") or {}}


def grpc_answer(target: str, request: bytes) -> list[int]:
    import grpc

    from mlvisor.server.grpc_stubs import open_inference_grpc_pb2 as pb
    from mlvisor.server.grpc_stubs import open_inference_grpc_pb2_grpc as pb_grpc

    with grpc.insecure_channel(target) as channel:
        resp = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(pb.ModelInferRequest.FromString(request), timeout=10)
    out = resp.outputs[0]
    if resp.raw_output_contents:
        import numpy as np

        dtype = {"INT64": "<i8", "INT32": "<i4", "FP64": "<f8"}[out.datatype]
        return [int(v) for v in np.frombuffer(resp.raw_output_contents[0], dtype)]
    c = out.contents
    return [int(v) for v in (c.int64_contents or c.int_contents or c.fp64_contents)]


def binary_body(work: Path, rows: list[list[float]]) -> tuple[Path, int]:
    """A binary-tensor V2 request (input and predict output binary) and its JSON header length."""
    import struct

    head = json.dumps({
        "inputs": [{"name": "input-0", "shape": [len(rows), len(rows[0])], "datatype": "FP64",
                    "parameters": {"binary_data_size": 8 * len(rows) * len(rows[0])}}],
        "outputs": [{"name": "predict", "parameters": {"binary_data": True}}],
    }).encode()
    path = work / "body-binary.bin"
    path.write_bytes(head + b"".join(struct.pack("<d", v) for row in rows for v in row))
    return path, len(head)


def check_same_answer(url_a: str, url_b: str, body: bytes) -> None:
    answers = []
    for url in (url_a, url_b):
        req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            out = json.loads(r.read())["outputs"]
        answers.append(next(o["data"] for o in out if o["name"] == "predict"))
    assert [int(a) for a in answers[0]] == [int(b) for b in answers[1]], answers


# ----------------------------------------------------------------------------- report
SCENARIOS = {
    # key: (label in the table, mlvisor protocol, MLServer protocol)
    "json": ("V2 JSON", "HTTP JSON", "HTTP JSON"),
    "binary": ("binary HTTP", "HTTP binary tensors", "HTTP JSON"),
    "grpc": ("gRPC", "gRPC", "gRPC"),
    "rows1000": ("1,000 rows/request", "HTTP JSON", "HTTP JSON"),
}


def table(results: list[dict], date: str, command: str, concurrency: tuple[int, ...], conditions: str = "") -> str:
    def med(server: str, model: str, scen: str, conc: int, key: str) -> float:
        return statistics.median(r[key] for r in results
                                 if r["server"] == server and r["model"] == model and r["scenario"] == scen and r["conc"] == conc)

    lines = [
        f"Run {date} on {platform.node() or 'this host'}: {os.cpu_count()} vCPU, Python {platform.python_version()}; "
        f"both servers and the load generators on the same host; median of the rounds.{conditions}",
        "",
        f"Command: `{command}`",
        "",
        "| model | request | conc | mlvisor req/s | MLServer req/s | throughput ratio | mlvisor p50 / p99 ms"
        " | MLServer p50 / p99 ms | p99 ratio (mlvisor/MLServer) | errors (mlvisor/MLServer) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for model in dict.fromkeys(r["model"] for r in results):
        points = list(dict.fromkeys((r["scenario"], r["conc"]) for r in results if r["model"] == model))
        for scen, conc in points:
            label, ours, theirs = SCENARIOS[scen]
            request = label if ours == theirs else f"{label} (MLServer: {theirs})"
            a_rps, b_rps = med("mlvisor", model, scen, conc, "rps"), med("mlserver", model, scen, conc, "rps")
            a50, a99 = med("mlvisor", model, scen, conc, "p50_us") / 1000, med("mlvisor", model, scen, conc, "p99_us") / 1000
            b50, b99 = med("mlserver", model, scen, conc, "p50_us") / 1000, med("mlserver", model, scen, conc, "p99_us") / 1000
            ea = sum(r["errors"] for r in results if r["server"] == "mlvisor" and r["model"] == model and r["scenario"] == scen and r["conc"] == conc)
            eb = sum(r["errors"] for r in results if r["server"] == "mlserver" and r["model"] == model and r["scenario"] == scen and r["conc"] == conc)
            rate = lambda v: f"{v:,.0f}"  # noqa: E731
            if scen == "rows1000":
                rate = lambda v: f"{v * 1000:,.0f} rows/s"  # noqa: E731
            lines.append(
                f"| {model} | {request} | {conc} | {rate(a_rps)} | {rate(b_rps)} | **{a_rps / b_rps:.2f}x** | {a50:.2f} / {a99:.2f}"
                f" | {b50:.2f} / {b99:.2f} | {a99 / b99:.2f} | {ea} / {eb} |"
            )
    return "\n".join(lines)


def write_readme(text: str) -> None:
    readme = BENCH / "README.md"
    begin, end = "<!-- serving:begin -->", "<!-- serving:end -->"
    current = readme.read_text() if readme.exists() else "# Benchmarks\n"
    block = f"{begin}\n{text}\n{end}"
    if begin in current and end in current:
        head, rest = current.split(begin, 1)
        current = head + block + rest.split(end, 1)[1]
    else:
        current = current.rstrip("\n") + "\n\n## Serving: mlvisor vs MLServer\n\n" + block + "\n"
    readme.write_text(current)


# ----------------------------------------------------------------------------- a change: before vs after
CHANGE_ARMS = {
    # key: (server, body, label)
    "before": ("before", "json", "before: one [1, 4] tensor"),
    "after": ("after", "json", "after: one [1, 4] tensor"),
    "columns": ("after", "columns", "after: 4 named [1] columns"),
}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (/proc/PID/stat, fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measured(wrk: str, url: str, body: Path, conc: int, seconds: float, pid: int) -> dict:
    """run_wrk plus the server's CPU time per answered request: less sensitive to other tenants than req/s."""
    before = cpu_seconds(pid)
    r = run_wrk(wrk, url, body, conc, seconds)
    r["cpu_us"] = (cpu_seconds(pid) - before) / max(r["requests"], 1) * 1e6
    return r


def post_json(url: str, body: bytes) -> dict:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def table_model(work: Path) -> tuple[dict, bytes, int]:
    """The census-like Pipeline (tests' helper) around RandomForest(100): model entry, one-row body, file size."""
    from sklearn.ensemble import RandomForestClassifier

    sys.path.insert(0, str(REPO / "tests"))
    from helpers.artifacts import TABLE_COLUMNS, build_table_artifact

    path, _, _ = build_table_artifact(work / "mlvisor" / "table", RandomForestClassifier(n_estimators=100, random_state=0),
                                      name="census", rows=1000)
    row = {"age": None, "workclass": "Private", "hours": 40, "education": "BSc"}
    body = json.dumps({"inputs": [{"name": c["name"], "shape": [1], "datatype": c["datatype"], "data": [row[c["name"]]]}
                                  for c in TABLE_COLUMNS], "outputs": [{"name": "predict"}]}).encode()
    return {"key": "table", "artifact": path, "name": "census"}, body, (path / "model.skops").stat().st_size


def compare_change(args: argparse.Namespace, wrk: str, work: Path, concurrency: tuple[int, ...]) -> str:
    ref = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", args.against], check=True,
                         capture_output=True, text=True).stdout.strip()
    tree = work / f"mlvisor-{ref}"
    tree.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", ref, "operator", "server", "trainer"],
                             check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    models = prepare_models(work)
    body = json.dumps({"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": ROW}],
                       "outputs": [{"name": "predict"}]}).encode()
    from sklearn.datasets import load_iris

    names = list(load_iris().feature_names)
    columns = json.dumps({"inputs": [{"name": n, "shape": [1], "datatype": "FP64", "data": [v]} for n, v in zip(names, ROW, strict=True)],
                          "outputs": [{"name": "predict"}]}).encode()
    files = {"json": work / "body.json", "columns": work / "body-columns.json"}
    files["json"].write_bytes(body)
    files["columns"].write_bytes(columns)
    results: list[dict] = []
    extra = ""
    for label in args.models:
        m = models[label]
        procs: dict[str, Proc] = {}
        try:
            procs["before"], url_before = start_mlvisor_at(m, work, tree, ref)
            procs["after"], url_after = start_mlvisor_at(m, work, None, "worktree")
            for p in procs.values():
                p.wait_ready()
            urls = {"before": url_before, "after": url_after}
            answers = [post_json(url_before, body), post_json(url_after, body), post_json(url_after, columns)]
            assert len({json.dumps(a["outputs"]) for a in answers}) == 1, answers
            arms = list(CHANGE_ARMS)
            for rnd in range(args.rounds):
                for conc in concurrency:
                    order = arms[rnd % 3:] + arms[: rnd % 3]
                    for arm in order:
                        server, kind, _ = CHANGE_ARMS[arm]
                        run_wrk(wrk, urls[server], files[kind], conc, args.warmup)
                        r = measured(wrk, urls[server], files[kind], conc, args.duration, procs[server].proc.pid)
                        r.update(arm=arm, model=label, conc=conc, round=rnd, load=os.getloadavg()[0])
                        results.append(r)
                        log(f"{label} c{conc} round {rnd} {arm}: {r['rps']:,.0f} req/s p50 {r['p50_us'] / 1000:.2f} ms "
                            f"p99 {r['p99_us'] / 1000:.2f} ms, {r['cpu_us']:.0f} us CPU/request, errors {r['errors']} "
                            f"(load {r['load']:.1f})")
        finally:
            for p in procs.values():
                p.stop()
    if args.table:
        m, table_body, size = table_model(work)
        files["table"] = work / "body-table.json"
        files["table"].write_bytes(table_body)
        plain = (models["RandomForest(100)"]["artifact"] / "model.skops").stat().st_size
        p, url = start_mlvisor_at(m, work, None, "table")
        try:
            p.wait_ready()
            post_json(url, table_body)
            rf = models["RandomForest(100)"]
            q, url_rf = start_mlvisor_at(rf, work, None, "worktree-rf")
            try:
                q.wait_ready()
                for rnd in range(args.rounds):
                    for conc in concurrency:
                        pair = [("table", url, "table", p), ("forest", url_rf, "json", q)]
                        for arm, u, kind, proc in (pair if rnd % 2 == 0 else pair[::-1]):
                            run_wrk(wrk, u, files[kind], conc, args.warmup)
                            r = measured(wrk, u, files[kind], conc, args.duration, proc.proc.pid)
                            r.update(arm=arm, model="table", conc=conc, round=rnd, load=os.getloadavg()[0])
                            results.append(r)
                            log(f"table c{conc} round {rnd} {arm}: {r['rps']:,.0f} req/s p99 {r['p99_us'] / 1000:.2f} ms "
                                f"errors {r['errors']} (load {r['load']:.1f})")
            finally:
                q.stop()
        finally:
            p.stop()
        extra = (f"\n\nmodel.skops: {size:,} bytes for the census Pipeline (RandomForest(100) fitted on 1,000 rows of "
                 f"4 columns, 2 of them strings) against {plain:,} bytes for RandomForest(100) on iris.")
    stamp = work.name.split("-", 1)[1]
    (RESULTS / f"serving-change-{stamp}.json").write_text(json.dumps(results, indent=1))
    return change_table(results, ref, concurrency) + extra


def change_table(results: list[dict], ref: str, concurrency: tuple[int, ...]) -> str:
    def med(model: str, arm: str, conc: int, key: str) -> float:
        vals = [r[key] for r in results if r["model"] == model and r["arm"] == arm and r["conc"] == conc]
        return statistics.median(vals) if vals else float("nan")

    def paired(model: str, a: str, b: str, conc: int, key: str = "rps") -> float:
        """Median over rounds of the ratio a/b measured in the same round (a paired comparison)."""
        by = {(r["arm"], r["round"]): r[key] for r in results if r["model"] == model and r["conc"] == conc}
        ratios = [by[(a, k)] / by[(b, k)] for (arm, k) in by if arm == a and (b, k) in by]
        return statistics.median(ratios) if ratios else float("nan")

    loads = [r["load"] for r in results]
    rounds = 1 + max(r["round"] for r in results)
    lines = [
        f"Run {dt.date.today().isoformat()} on {platform.node() or 'this host'}: {os.cpu_count()} vCPU; before = mlvisor at "
        f"{ref}, after = the working tree; {rounds} rounds, arms alternating; 1-minute load average "
        f"{min(loads):.1f} to {max(loads):.1f} (2 = both cores busy). Ratios are medians of per-round ratios.",
        "",
        "| model | conc | before req/s | after req/s | **after / before** | before p50 / p99 ms | after p50 / p99 ms"
        " | CPU us/request before / after (ratio) | named columns req/s | **columns / tensor** | columns p50 / p99 ms"
        " | columns CPU us/request (vs tensor) | errors |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for model in dict.fromkeys(r["model"] for r in results if r["model"] != "table"):
        for conc in concurrency:
            b, a, c = (med(model, k, conc, "rps") for k in ("before", "after", "columns"))
            p = {k: (med(model, k, conc, "p50_us") / 1000, med(model, k, conc, "p99_us") / 1000)
                 for k in ("before", "after", "columns")}
            errors = sum(r["errors"] for r in results if r["model"] == model and r["conc"] == conc)
            lines.append(
                f"| {model} | {conc} | {b:,.0f} | {a:,.0f} | **{paired(model, 'after', 'before', conc):.3f}** | "
                f"{p['before'][0]:.2f} / {p['before'][1]:.2f} | {p['after'][0]:.2f} / {p['after'][1]:.2f} | "
                f"{med(model, 'before', conc, 'cpu_us'):.0f} / {med(model, 'after', conc, 'cpu_us'):.0f} "
                f"({paired(model, 'after', 'before', conc, 'cpu_us'):.3f}) | {c:,.0f} | "
                f"**{paired(model, 'columns', 'after', conc):.3f}** | {p['columns'][0]:.2f} / {p['columns'][1]:.2f} | "
                f"{med(model, 'columns', conc, 'cpu_us'):.0f} ({paired(model, 'columns', 'after', conc, 'cpu_us'):.3f}) | {errors} |"
            )
    if any(r["model"] == "table" for r in results):
        lines += ["", "| table model (after) | conc | req/s | p50 / p99 ms | vs the iris forest (one tensor) "
                  "| CPU us/request (vs the forest) | errors |", "|---|---|---|---|---|---|---|"]
        for conc in concurrency:
            t = med("table", "table", conc, "rps")
            lines.append(
                f"| census Pipeline (imputers, OneHotEncoder, RandomForest(100)), 4 named columns with a string and a null "
                f"| {conc} | {t:,.0f} | {med('table', 'table', conc, 'p50_us') / 1000:.2f} / "
                f"{med('table', 'table', conc, 'p99_us') / 1000:.2f} | {paired('table', 'table', 'forest', conc):.3f}x | "
                f"{med('table', 'table', conc, 'cpu_us'):.0f} ({paired('table', 'table', 'forest', conc, 'cpu_us'):.2f}x) | "
                f"{sum(r['errors'] for r in results if r['model'] == 'table' and r['arm'] == 'table' and r['conc'] == conc)} |")
    return "\n".join(lines)


def write_block(text: str, name: str) -> None:
    readme = BENCH / "README.md"
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    current = readme.read_text()
    head, rest = current.split(begin, 1)
    readme.write_text(head + f"{begin}\n{text}\n{end}" + rest.split(end, 1)[1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=10, help="seconds per measured point (default 10)")
    ap.add_argument("--warmup", type=float, default=2, help="seconds of warm-up load before each point")
    ap.add_argument("--rounds", type=int, default=3, help="rounds over all points; the table shows medians")
    ap.add_argument("--concurrency", type=int, nargs="+", default=list(CONCURRENCY))
    ap.add_argument("--protocol-concurrency", type=int, default=32, help="concurrency of the binary and gRPC rows")
    ap.add_argument("--large-concurrency", type=int, default=8, help="concurrency of the 1,000-rows row")
    ap.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=list(SCENARIOS))
    ap.add_argument("--models", nargs="+", default=["RandomForest(100)", "LogisticRegression"])
    ap.add_argument("--write-readme", action="store_true", help="replace the table in bench/README.md")
    ap.add_argument("--conditions", default="", help="a sentence on the machine's load during the run, for the table")
    ap.add_argument("--against", metavar="REF", help="measure a change: mlvisor at git REF vs the working tree")
    ap.add_argument("--table", action="store_true", help="with --against: also a table Pipeline asked by column name")
    args = ap.parse_args()
    concurrency = tuple(args.concurrency)
    if args.against:
        wrk = ensure_wrk()
        RESULTS.mkdir(exist_ok=True)
        work = RESULTS / f"change-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
        work.mkdir()
        text = compare_change(args, wrk, work, concurrency)
        command = f"{os.path.relpath(sys.executable, REPO)} bench/serving.py " + " ".join(sys.argv[1:])
        text = text + f"\n\nCommand: `{command.strip()}`"
        print(text)
        if args.write_readme:
            write_block(text, "serving-change")
        return 0

    exe, wrk = ensure_mlserver(), ensure_wrk()
    ghz = ghz_path()
    scenarios = list(args.scenarios)
    if "grpc" in scenarios and ghz is None:
        log("ghz not found (go install github.com/bojand/ghz/cmd/ghz@v0.120.0): leaving out the gRPC rows")
        scenarios.remove("grpc")
    RESULTS.mkdir(exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    work = RESULTS / f"serving-{stamp}"
    work.mkdir()
    models = prepare_models(work)
    body_file = work / "body.json"
    body = json.dumps({"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": ROW}],
                       "outputs": [{"name": "predict"}]}).encode()
    body_file.write_bytes(body)
    big_rows = [[ROW[j] + 0.01 * (i % 50) for j in range(4)] for i in range(1000)]
    big_file = work / "body-1000.json"
    big_file.write_bytes(json.dumps({"inputs": [{"name": "input-0", "shape": [1000, 4], "datatype": "FP64",
                                                  "data": [v for r in big_rows for v in r]}],
                                     "outputs": [{"name": "predict"}]}).encode())
    bin_file, bin_header = binary_body(work, [ROW])
    protoset, grpc_file = grpc_request_file(work)
    points = [("json", c) for c in concurrency if "json" in scenarios]
    points += [(sc, args.protocol_concurrency) for sc in ("binary", "grpc") if sc in scenarios]
    points += [("rows1000", args.large_concurrency)] if "rows1000" in scenarios else []
    results: list[dict] = []
    for label in args.models:
        m = models[label]
        procs = []
        try:
            a, url_a, grpc_a = start_mlvisor(m, work)
            procs.append(a)
            b, url_b, grpc_b = start_mlserver(m, exe, work)
            procs.append(b)
            a.wait_ready()
            b.wait_ready()
            check_same_answer(url_a, url_b, body)
            grpc_body = write_grpc_request(grpc_file, m["name"], [ROW])
            if "grpc" in scenarios:
                assert grpc_answer(grpc_a, grpc_body) == grpc_answer(grpc_b, grpc_body), "gRPC answers differ"
            urls = {"mlvisor": (url_a, grpc_a), "mlserver": (url_b, grpc_b)}

            def measure(server: str, scen: str, conc: int, seconds: float, urls: dict = urls) -> dict:
                url, target = urls[server]
                if scen == "grpc":
                    return run_ghz(ghz, target, protoset, grpc_file, conc, seconds)  # type: ignore[arg-type]
                if scen == "binary" and server == "mlvisor":
                    return run_wrk(wrk, url, bin_file, conc, seconds, header_length=bin_header)
                return run_wrk(wrk, url, big_file if scen == "rows1000" else body_file, conc, seconds)

            for rnd in range(args.rounds):
                for i, (scen, conc) in enumerate(points):
                    order = ["mlvisor", "mlserver"] if (rnd + i) % 2 == 0 else ["mlserver", "mlvisor"]
                    for server in order:
                        measure(server, scen, conc, args.warmup)
                        r = measure(server, scen, conc, args.duration)
                        r.update(server=server, model=label, scenario=scen, conc=conc, round=rnd, load=os.getloadavg()[0])
                        results.append(r)
                        log(f"{label} {scen} c{conc} round {rnd} {server}: {r['rps']:,.0f} req/s "
                            f"p50 {r['p50_us'] / 1000:.2f} ms p99 {r['p99_us'] / 1000:.2f} ms errors {r['errors']} "
                            f"(load {r['load']:.1f})")
        finally:
            for p in procs:
                p.stop()
    (RESULTS / f"serving-{stamp}.json").write_text(json.dumps(results, indent=1))
    command = f"{os.path.relpath(sys.executable, REPO)} bench/serving.py " + " ".join(
        a for a in sys.argv[1:] if not a.startswith("--conditions"))
    loads = [r["load"] for r in results]
    conditions = args.conditions or (
        f" 1-minute load average during the run {min(loads):.1f} to {max(loads):.1f} (2 = both cores busy)."
    )
    text = table(results, dt.date.today().isoformat(), command.strip(), concurrency, " " + conditions.strip())
    print(text)
    if args.write_readme:
        write_readme(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
