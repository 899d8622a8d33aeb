"""CSV datasets written the way a user drops a file onto a claim."""

from __future__ import annotations

from pathlib import Path


def write_iris_csv(path: Path) -> None:
    """iris as a CSV file with a ``species`` target column, written atomically."""
    from sklearn.datasets import load_iris

    data = load_iris()
    lines = ["sepal_length,sepal_width,petal_length,petal_width,species"]
    lines += [",".join(f"{v:g}" for v in row) + f",{label}" for row, label in zip(data.data, data.target)]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.rename(path)  # the trainer never sees half a file
