"""Time an operator restart on a namespace that already holds N TrainingJobs.

The namespace is one ``bench/operator.py --keep`` left. This starts ``mlvisor operator -n NS``
from this checkout and polls its reconcile counter until N TrainingJob reconciles and 5 s
without one; it prints that time, the operator's own API requests and its RSS (now and peak).

    KUBECONFIG=... .venv/bin/python bench/operator_restart.py NAMESPACE N
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
import urllib.request


def counters(port: int) -> tuple[float, float] | None:
    """(TrainingJob reconciles, API requests) from the operator's /metrics; None: not up yet."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
            text = answer.read().decode()
    except OSError:
        return None
    lines = text.splitlines()
    reconciles = sum(float(line.split()[-1]) for line in lines
                     if line.startswith("mlvisor_reconciles_total{") and 'kind="TrainingJob"' in line)
    requests = sum(float(line.split()[-1]) for line in lines if line.startswith("mlvisor_api_requests_total{"))
    return reconciles, requests


def rss_mb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(next(line for line in f if line.startswith("VmRSS")).split()[1]) // 1024


def main() -> int:
    namespace, n = sys.argv[1], int(sys.argv[2])
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with open(f"/tmp/operator-restart-{namespace}.log", "wb") as log:
        t0 = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-m", "mlvisor.operator.cli", "operator", "-n", namespace,
                                 "--liveness-port", "0", "--metrics-port", str(port), "--log-format", "text"],
                                stdout=log, stderr=subprocess.STDOUT)
        last, changed, peak, rss, requests = -1.0, time.monotonic(), 0, 0, 0.0
        while time.monotonic() - t0 < 900:
            rss = rss_mb(proc.pid)
            peak = max(peak, rss)
            seen = counters(port)
            if seen is not None:
                reconciles, requests = seen
                if reconciles != last:
                    last, changed = reconciles, time.monotonic()
                elif reconciles >= n and time.monotonic() - changed >= 5:
                    break
            time.sleep(0.2)
        print(f"settled {changed - t0:.1f} s after the start; reconciles {last:.0f}; operator requests "
              f"{requests:.0f}; RSS now {rss} MB, peak {peak} MB", flush=True)
        proc.send_signal(signal.SIGINT)
        proc.wait(60)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
