"""Cost of refusing hostile resource files (`mlvisor validate` / `mlvisor run`): time and peak memory.

Each case is refused by ``load_resources`` REPEATS times in this process; the table gives the
median wall time and the peak Python heap (tracemalloc) of one refusal, next to the cost of
accepting the iris sample, the file users actually write (schema only, and with the
scikit-learn pre-flight check that `mlvisor validate` adds).

Run: ``.venv/bin/python bench/resource_files.py`` (about 20 s).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from helpers.resource_bombs import BOMBS  # noqa: E402
from mlvisor.api.problems import ResourceError  # noqa: E402
from mlvisor.operator.resources_cli import load_resources  # noqa: E402

REPEATS = 20


def measure(text: str | bytes, check: bool) -> tuple[float, float, str]:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "r.yaml"
        path.write_bytes(text.encode() if isinstance(text, str) else text)
        times = []
        outcome = ""
        for _ in range(REPEATS):
            t0 = time.perf_counter()
            try:
                load_resources(path, check=check)
                outcome = "accepted"
            except ResourceError as e:
                outcome = "refused: " + e.problems[0].split(": ", 1)[1][:70]
            times.append(time.perf_counter() - t0)
        tracemalloc.start()
        try:
            load_resources(path, check=check)
        except ResourceError:
            pass
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return statistics.median(times), peak, outcome


def main() -> None:
    cases = {"iris sample (accepted)": (ROOT / "manifests" / "samples" / "iris.yaml").read_text(), **BOMBS,
             "64 MiB file": b"a: b\n#" + b"x" * (64 << 20) + b"\n"}
    print(f"{REPEATS} refusals each; median time, peak heap of one; schema only (no scikit-learn check)\n")
    print("| case | median ms | peak heap KiB | outcome |")
    print("|---|---|---|---|")
    for name, text in cases.items():
        t, peak, outcome = measure(text, check=False)
        print(f"| {name} | {t * 1000:.2f} | {peak / 1024:.0f} | {outcome} |")
    t, peak, outcome = measure(cases["iris sample (accepted)"], check=True)
    print(f"| iris sample, with the scikit-learn check | {t * 1000:.2f} | {peak / 1024:.0f} | {outcome} |")


if __name__ == "__main__":
    main()
