"""CSV datasets written the way a user drops a file onto a claim."""

from __future__ import annotations

from pathlib import Path


def write_iris_csv(path: Path) -> None:
    """iris as a CSV file with a ``species`` target column, written atomically."""
    from sklearn.datasets import load_iris

    data = load_iris()
    lines = ["sepal_length,sepal_width,petal_length,petal_width,species"]
    lines += [",".join(f"{v:g}" for v in row) + f",{label}" for row, label in zip(data.data, data.target, strict=False)]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.rename(path)  # the trainer never sees half a file


#: The columns of the census sample (manifests/samples/data/census.csv), target last.
CENSUS_COLUMNS = ("age", "workclass", "education", "marital_status", "occupation", "hours_per_week",
                  "capital_gain", "native_region", "income")


def census_rows(rows: int = 1000, seed: int = 20) -> list[list[str]]:
    """A census-like table as it comes: numbers, text categories and empty cells (``""``), and a
    string target ``income`` (>50K or <=50K) that depends on most columns. Deterministic."""
    import numpy as np

    rng = np.random.default_rng(seed)
    education = {"11th": -1.5, "HS-grad": -0.6, "Some-college": -0.2, "Bachelors": 0.7, "Masters": 1.2,
                 "Doctorate": 1.6}
    workclass = {"Private": 0.0, "Self-emp": 0.4, "Government": 0.2, "Without-pay": -2.0}
    marital = {"Married": 1.1, "Never-married": -0.9, "Divorced": -0.4, "Widowed": -0.5}
    occupation = {"Exec-managerial": 0.9, "Prof-specialty": 0.8, "Tech-support": 0.3, "Sales": 0.2,
                  "Craft-repair": -0.1, "Adm-clerical": -0.3, "Other-service": -1.0, "Handlers-cleaners": -1.1}
    regions = ["North-America", "Europe", "Asia", "Latin-America", "Africa", "Oceania"]
    out = []
    for _ in range(rows):
        age = int(rng.integers(17, 80))
        w = str(rng.choice(list(workclass), p=[0.7, 0.12, 0.15, 0.03]))
        e = str(rng.choice(list(education), p=[0.1, 0.32, 0.22, 0.2, 0.12, 0.04]))
        m = str(rng.choice(list(marital), p=[0.47, 0.33, 0.14, 0.06]))
        o = str(rng.choice(list(occupation)))
        hours = int(np.clip(rng.normal(40, 11), 1, 99))
        gain = int(rng.choice([0, 0, 0, 0, 0, 0, 0, 2174, 5178, 15024]))
        region = str(rng.choice(regions, p=[0.6, 0.15, 0.1, 0.1, 0.03, 0.02]))
        z = (-2.2 + 0.045 * (min(age, 60) - 38) + education[e] + workclass[w] + marital[m] + occupation[o]
             + 0.03 * (hours - 40) + (1.5 if gain > 5000 else 0.0) + rng.normal(0, 0.6))
        income = ">50K" if z > 0 else "<=50K"
        cells = [str(age), w, e, m, o, str(hours), str(gain), region, income]
        if rng.random() < 0.05:
            cells[0] = ""
        if rng.random() < 0.06:
            cells[1] = ""
        if rng.random() < 0.07:
            cells[4] = ""
        out.append(cells)
    return out


def census_csv_text(rows: int = 1000, seed: int = 20) -> str:
    lines = [",".join(CENSUS_COLUMNS)] + [",".join(r) for r in census_rows(rows, seed)]
    return "\n".join(lines) + "\n"
