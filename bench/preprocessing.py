"""What the preprocessing inside a table model costs: size on disk and time per prediction.

A table (text columns, empty cells) is trained into one scikit-learn Pipeline: a
ColumnTransformer (encoding, imputation) and the estimator, saved as one skops file, so the
server takes raw values. This measures, for a RandomForest and a HistGradientBoosting model
trained by ``mlvisor train`` on the census-like sample (manifests/samples/data/census.csv):

- the size of model.skops against the estimator alone saved the same way;
- the time of ``pipeline.predict_proba`` on raw rows, of the transform alone, and of the
  estimator's own ``predict_proba`` on rows transformed beforehand (calls interleaved), for 1, 100 and 1,000 rows (median of
  repeated calls, in this one process: a ratio, not an absolute figure).

    .venv/bin/python bench/preprocessing.py [--repeats 200]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import skops.io

from mlvisor.server.runtime import ModelRuntime

REPO = Path(__file__).resolve().parent.parent
CENSUS = REPO / "manifests" / "samples" / "data" / "census.csv"
ESTIMATORS = {
    "RandomForestClassifier": "{n_estimators: 100, random_state: 0}",
    "HistGradientBoostingClassifier": "{random_state: 0}",
}


def train(estimator: str, params: str, out: Path) -> Path:
    spec = out / f"{estimator}.yaml"
    spec.write_text(
        "apiVersion: mlvisor.dev/v1alpha1\nkind: TrainingJob\nmetadata: {name: census}\nspec:\n"
        f"  dataset: {{uri: 'file://{CENSUS}', target: income}}\n"
        f"  estimator: {{class: sklearn.ensemble.{estimator}, params: {params}}}\n"
    )
    root = out / estimator
    subprocess.run([sys.executable, "-m", "mlvisor.operator.cli", "train", str(spec), "-o", str(root),
                    "--log-format", "text"], check=True, capture_output=True)
    (version,) = root.iterdir()
    return version


def interleaved_medians(fns, repeats: int) -> list[float]:
    """Median seconds of each function, called in turn (so load on a shared machine hits all alike)."""
    times: list[list[float]] = [[] for _ in fns]
    for fn in fns:
        fn()
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            t = time.perf_counter()
            fn()
            times[i].append(time.perf_counter() - t)
    return [statistics.median(t) for t in times]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=200)
    args = ap.parse_args()
    table = pd.read_csv(CENSUS)
    print(f"data: {CENSUS.relative_to(REPO)} ({len(table)} rows)")
    print("| model | model.skops | estimator alone | rows | pipeline on raw rows | transform alone "
          "| estimator on transformed rows | ratio |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for estimator, params in ESTIMATORS.items():
            version = train(estimator, params, Path(tmp))
            runtime, _ = ModelRuntime.load(version, "census")
            pipeline = runtime.model
            pre, final = pipeline[:-1], pipeline.steps[-1][1]
            size = (version / "model.skops").stat().st_size
            alone = len(skops.io.dumps(final))
            names = [c.name for c in runtime.columns]
            raw = table[names].copy()
            for c in runtime.columns:
                raw[c.name] = raw[c.name].astype(object) if c.datatype == "BYTES" else raw[c.name].astype(float)
            for rows in (1, 100, 1000):
                x = raw.iloc[:rows]
                xt = pre.transform(x)
                t_pipe, t_pre, t_final = interleaved_medians(
                    [partial(pipeline.predict_proba, x), partial(pre.transform, x), partial(final.predict_proba, xt)],
                    args.repeats)
                assert np.allclose(pipeline.predict_proba(x), final.predict_proba(xt))
                print(f"| {estimator} | {size / 1024:.0f} KiB | {alone / 1024:.0f} KiB | {rows} | "
                      f"{t_pipe * 1e3:.2f} ms | {t_pre * 1e3:.2f} ms | {t_final * 1e3:.2f} ms | {t_pipe / t_final:.2f}x |")


if __name__ == "__main__":
    main()
