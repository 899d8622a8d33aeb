"""Benchmark: wall time of one grid search on 1 worker process versus 2 worker processes.

Why: the trainer spreads a search grid over worker pods; this measures what that buys on one
machine. Each configuration runs exactly what the operator runs (real ``python -m
mlvisor.trainer`` processes, configured through the pod environment variables): N shard
processes started together, then the select step once they all exited 0. Times include
process start-up (Python, sklearn import, dataset load), as a pod's would.

    python bench/trainer_search.py              # both grids, 3 repeats, prints a table
    python bench/trainer_search.py --repeats 1  # quicker

BLAS/OpenMP are pinned to one thread per process so the two workers do not oversubscribe
the cores. Wall time on a shared machine is noisy, so the table also gives each shard's CPU
time (from wait4): "CPU-bound speedup" = CPU of the 1-worker run / CPU of the slowest shard
of the 2-worker run, the speedup the sharding allows when both cores are free.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BASE: dict[str, Any] = {
    "dataset": {"builtin": "digits"},
    "estimator": {"class": "sklearn.ensemble.RandomForestClassifier",
                  "params": {"random_state": 0, "n_jobs": 1}},
    "workers": 2,
}
#: Two grids of 12 trials x 3 folds. The last parameter by sorted name (n_estimators, the one
#: that sets the cost) varies fastest: with 3 values round-robin shards (t % N) got a mix of
#: cheap and costly trials; with 2 values shard 0 got every 50-tree trial and shard 1 every
#: 100-tree trial. Balanced shards (a seeded permutation before p % N) split both evenly.
GRIDS: dict[str, dict[str, Any]] = {
    "mixed": {"grid": {"n_estimators": [40, 80, 120], "max_depth": [8, None],
                       "max_features": ["sqrt", 0.3]}, "cv": 3},
    "aligned": {"grid": {"n_estimators": [50, 100], "max_depth": [8, 16, None],
                         "max_features": ["sqrt", 0.3]}, "cv": 3},
}
THREADS = {k: "1" for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}


def run_search(spec: dict[str, Any], workers: int, root: Path) -> dict[str, Any]:
    """Run the shards of ``workers`` in parallel, then select; returns phase wall times."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("MLVISOR_")}
    env = {**base, **THREADS, "MLVISOR_SPEC": json.dumps({**spec, "workers": workers}),
           "MLVISOR_OUTPUT_DIR": str(root), "MLVISOR_MODEL_VERSION": "bench",
           "MLVISOR_WORKERS": str(workers)}
    cmd = [sys.executable, "-m", "mlvisor.trainer"]
    started = time.perf_counter()
    logs = [tempfile.TemporaryFile(mode="w+") for _ in range(workers)]
    procs = [subprocess.Popen(cmd, env={**env, "MLVISOR_WORKER_INDEX": str(i)},
                              stdout=subprocess.DEVNULL, stderr=logs[i], text=True)
             for i in range(workers)]
    cpu = []
    for p, log in zip(procs, logs, strict=True):
        _, status, usage = os.wait4(p.pid, 0)  # the child's own CPU time, not just wall time
        p.returncode = os.waitstatus_to_exitcode(status)
        cpu.append(usage.ru_utime + usage.ru_stime)
        if p.returncode != 0:
            log.seek(0)
            raise SystemExit(f"shard exited {p.returncode}:\n{log.read()}")
    shards_done = time.perf_counter()
    sel = subprocess.run(cmd, env={**env, "MLVISOR_STEP": "select"}, capture_output=True, text=True)
    if sel.returncode != 0:
        raise SystemExit(f"select exited {sel.returncode}:\n{sel.stderr}")
    done = time.perf_counter()
    meta = json.loads((root / "bench" / "metadata.json").read_text())
    return {"shards": shards_done - started, "select": done - shards_done, "total": done - started,
            "cpu_sum": sum(cpu), "cpu_max": max(cpu), "best_params": meta["best_params"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"{BASE['estimator']['class']} on {BASE['dataset']['builtin']}; {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}; median of {args.repeats} runs; times in seconds")
    print()
    print("| grid | workers | shards wall | select | total | speedup (shards) | speedup (total) "
          "| shard CPU sum | slowest shard CPU | CPU-bound speedup |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, search in GRIDS.items():
        spec = {**BASE, "search": search}
        runs: dict[int, list[dict[str, Any]]] = {1: [], 2: []}
        for _ in range(args.repeats):
            for workers in (1, 2):  # interleaved, so drift in machine load hits both alike
                with tempfile.TemporaryDirectory() as tmp:
                    runs[workers].append(run_search(spec, workers, Path(tmp)))
        if runs[1][0]["best_params"] != runs[2][0]["best_params"]:
            raise SystemExit(f"grid {name}: 1 and 2 workers chose different params")
        keys = ("shards", "select", "total", "cpu_sum", "cpu_max")
        med = {w: {k: statistics.median(r[k] for r in rs) for k in keys} for w, rs in runs.items()}
        for w in (1, 2):
            print(f"| {name} | {w} | {med[w]['shards']:.2f} | {med[w]['select']:.2f} "
                  f"| {med[w]['total']:.2f} | {med[1]['shards'] / med[w]['shards']:.2f}x "
                  f"| {med[1]['total'] / med[w]['total']:.2f}x | {med[w]['cpu_sum']:.2f} "
                  f"| {med[w]['cpu_max']:.2f} | {med[1]['cpu_sum'] / med[w]['cpu_max']:.2f}x |")


if __name__ == "__main__":
    main()
