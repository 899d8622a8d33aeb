"""Sustained load: 80% of the measured maximum for 10 minutes against one mlvisor server.

Usage (from the repository root):

    .venv/bin/python bench/sustained.py [--minutes 10] [--share 0.8] [--model rf|lr]

What it does:

1. Serves RandomForestClassifier(100) (or LogisticRegression) on iris with the defaults a
   ModelServer gets (batching 64 rows / 5 ms, queue 256, request timeout 30 s).
2. Measures the maximum with the load generator of the run itself (vegeta in closed loop,
   ``-rate=0``, 32 and 64 workers, 15 s each after a warm-up), single-row V2 JSON; the maximum
   is the better of the two.
3. Drives the server at ``--share`` of that rate, open loop (a constant arrival rate, so a slow
   server meets a growing queue instead of fewer requests), with vegeta
   (``go install github.com/tsenart/vegeta/v12@v12.12.0``), one minute at a time for
   ``--minutes`` minutes, and samples the server's resident memory every 5 s.
4. Prints, per minute: the rate achieved, errors, p50/p99/max latency and RSS; then the verdict:
   zero errors, p99 stable (the worst minute's p99 against the median minute's), memory growth
   from the first to the last minute. The raw numbers go to ``bench/results/sustained-*.json``.

Not a test: numbers depend on the machine (server and load generator share its cores).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))

from serving import RESULTS, ROW, Proc, ensure_wrk, free_port, log, prepare_models, run_wrk  # noqa: E402


def vegeta_path() -> str:
    found = shutil.which("vegeta") or str(Path(os.environ.get("GOPATH", Path.home() / "go")) / "bin" / "vegeta")
    if not Path(found).exists():
        raise SystemExit("vegeta not found: go install github.com/tsenart/vegeta/v12@v12.12.0")
    return found


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def vegeta_max(vegeta: str, url: str, body: Path, conc: int, seconds: int) -> dict:
    """Closed loop: ``conc`` workers sending as fast as answers come back (vegeta -rate=0)."""
    return vegeta_minute(vegeta, url, body, 0, seconds, workers=conc)


def vegeta_minute(vegeta: str, url: str, body: Path, rate: int, seconds: int, workers: int | None = None) -> dict:
    target = f"POST {url}\nContent-Type: application/json\n@{body}\n"
    pool = [f"-workers={workers}", f"-max-workers={workers}"] if workers else ["-workers=64", "-max-workers=1024"]
    attack = subprocess.run(
        [vegeta, "attack", f"-rate={rate}/s" if rate else "-rate=0", f"-duration={seconds}s", "-timeout=30s",
         *pool, "-keepalive=true"],
        input=target.encode(), capture_output=True, check=True,
    )
    report = subprocess.run([vegeta, "report", "-type=json"], input=attack.stdout, capture_output=True, check=True)
    r = json.loads(report.stdout)
    lat = r["latencies"]
    codes = r.get("status_codes") or {}
    return {
        "requests": r["requests"], "rate": r["rate"], "throughput": r["throughput"],
        "success": r["success"], "errors": r["requests"] - codes.get("200", 0), "status_codes": codes,
        "p50_ms": lat["50th"] / 1e6, "p99_ms": lat["99th"] / 1e6, "max_ms": lat["max"] / 1e6,
        "error_samples": (r.get("errors") or [])[:5],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=int, default=10)
    ap.add_argument("--share", type=float, default=0.8, help="share of the measured maximum to sustain")
    ap.add_argument("--model", choices=["rf", "lr"], default="rf")
    args = ap.parse_args()
    wrk, vegeta = ensure_wrk(), vegeta_path()
    RESULTS.mkdir(exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    work = RESULTS / f"sustained-{stamp}"
    work.mkdir()
    label = "RandomForest(100)" if args.model == "rf" else "LogisticRegression"
    m = prepare_models(work)[label]
    body = work / "body.json"
    body.write_bytes(json.dumps({"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": ROW}],
                                 "outputs": [{"name": "predict"}]}).encode())
    port = free_port()
    env = dict(os.environ, MLVISOR_MODEL_DIR=str(m["artifact"]), MLVISOR_HOST="127.0.0.1", MLVISOR_PORT=str(port),
               MLVISOR_GRPC_PORT="0", MLVISOR_LOG_LEVEL="warning")
    base = f"http://127.0.0.1:{port}"
    url = f"{base}/v2/models/{m['name']}/infer"
    server = Proc("mlvisor", [sys.executable, "-m", "mlvisor.server"], env, base + "/v2/health/ready",
                  work / "server.log", REPO)
    samples: list[tuple[float, int]] = []
    stop = threading.Event()
    try:
        server.wait_ready()
        pid = server.proc.pid
        maxima = {}
        run_wrk(wrk, url, body, 32, 3)  # warm-up
        for conc in (32, 64):
            # The maximum with the load generator that then drives the run (vegeta's own CPU
            # counts: a maximum measured with a lighter generator would overstate it).
            maxima[conc] = vegeta_max(vegeta, url, body, conc, 15)
            log(f"max at c{conc}: {maxima[conc]['throughput']:,.0f} req/s, p99 {maxima[conc]['p99_ms']:.2f} ms, "
                f"errors {maxima[conc]['errors']}")
        best = max(r["throughput"] for r in maxima.values())
        rate = int(best * args.share)
        log(f"maximum {best:,.0f} req/s; sustaining {rate:,} req/s ({args.share:.0%}) for {args.minutes} min")

        def sample() -> None:
            t0 = time.monotonic()
            while not stop.is_set():
                samples.append((time.monotonic() - t0, rss_bytes(pid)))
                stop.wait(5)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        minutes = []
        for i in range(args.minutes):
            before = len(samples)
            r = vegeta_minute(vegeta, url, body, rate, 60)
            r["rss_mib"] = statistics.mean(b for _, b in samples[before:] or samples[-1:]) / 2**20
            r["load"] = os.getloadavg()[0]
            minutes.append(r)
            log(f"minute {i + 1}: {r['throughput']:,.0f} req/s ok, errors {r['errors']}, p50 {r['p50_ms']:.2f} ms, "
                f"p99 {r['p99_ms']:.2f} ms, max {r['max_ms']:.1f} ms, RSS {r['rss_mib']:.1f} MiB, load {r['load']:.1f}")
        stop.set()
        ready = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", base + "/v2/health/ready"],
                               capture_output=True, text=True).stdout
    finally:
        stop.set()
        server.stop()
    p99s = [r["p99_ms"] for r in minutes]
    first, last = minutes[0]["rss_mib"], minutes[-1]["rss_mib"]
    summary = {
        "model": label, "max_rps": best, "maxima": {str(k): v for k, v in maxima.items()}, "rate": rate,
        "minutes": minutes, "rss_samples": samples, "errors": sum(r["errors"] for r in minutes),
        "p99_median_ms": statistics.median(p99s), "p99_worst_ms": max(p99s),
        "rss_first_mib": first, "rss_last_mib": last, "rss_growth": (last - first) / first, "ready_after": ready,
    }
    (RESULTS / f"sustained-{stamp}.json").write_text(json.dumps(summary, indent=1))
    print(f"\n{label}: maximum {best:,.0f} req/s (vegeta closed loop, 32/64 workers); sustained {rate:,} req/s for {args.minutes} min (vegeta)")
    print("| minute | req/s ok | errors | p50 ms | p99 ms | max ms | RSS MiB | load |")
    print("|---|---|---|---|---|---|---|---|")
    for i, r in enumerate(minutes, 1):
        print(f"| {i} | {r['throughput']:,.0f} | {r['errors']} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['max_ms']:.1f}"
              f" | {r['rss_mib']:.1f} | {r['load']:.1f} |")
    print(f"\nerrors {summary['errors']}; p99 median {summary['p99_median_ms']:.2f} ms, worst minute "
          f"{summary['p99_worst_ms']:.2f} ms; RSS {first:.1f} -> {last:.1f} MiB ({summary['rss_growth']:+.1%}); "
          f"ready afterwards: {ready}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
