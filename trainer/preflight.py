"""Everything that can be known about a TrainingJob spec before training, every problem listed.

``mlvisor validate``, ``mlvisor run`` and the operator's pre-flight check (before any pod is
created) call :func:`spec_problems`; the trainer calls it too before it loads any data, so
a spec is judged the same everywhere. Each problem names the field, the value given and
what was expected, in scikit-learn's own terms where scikit-learn has them (its parameter
constraints, its scorer names): the class resolves inside the allowlist (did-you-mean for
typos), it is a classifier or a regressor for one target column, every parameter exists
(did-you-mean) and each value passes scikit-learn's parameter validation on its own (then
all of them together), every grid key exists and every grid value passes, and the scoring
is a scorer. Locally (``data_dir`` given) a CSV file must exist and have the target column.

Problems are found independently where they are independent, so a file with a typo in a
parameter name *and* a misspelled scorer gets both; a class that does not resolve stops the
checks that need it.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from mlvisor.operator import api
from mlvisor.trainer.estimators import (
    EstimatorRecipe,
    check_grid,
    check_param_names,
    check_param_values,
    check_single_output,
    materialize,
    resolve_estimator_class,
    resolve_scoring,
    task_of,
)
from mlvisor.trainer.spec import InvalidSpec


def spec_problems(spec: api.TrainingJobSpec, data_dir: Path | None = None) -> list[str]:
    """Every problem of ``spec`` that needs scikit-learn (and, with ``data_dir``, the CSV) to see."""
    problems: list[str] = []

    def attempt(check: Any, *args: Any) -> Any:
        try:
            return check(*args)
        except InvalidSpec as e:
            problems.append(str(e))
            return None

    cls, recipe = _recipe(spec, problems)
    search = spec.search
    if search is not None:
        if recipe is not None:
            for name, values in search.grid.items():
                attempt(check_grid, recipe, {name: values})
        elif cls is not None:  # the params are wrong, but the grid can still be judged on its own
            alone = EstimatorRecipe(path=spec.estimator.class_, cls=cls, params={}, task="")
            for name, values in search.grid.items():
                if "__" in name:
                    continue  # nested names need the whole estimator
                try:
                    check_param_names(cls, alone.path, [name], "spec.search.grid")
                except InvalidSpec as e:
                    problems.append(str(e))
                    continue
                for value in values:
                    try:
                        check_param_values(alone, {name: value}, f"spec.search.grid.{name} value {value!r}")
                    except InvalidSpec as e:
                        if "cannot be constructed" not in str(e):
                            problems.append(str(e))
        attempt(resolve_scoring, search.scoring, recipe.task if recipe is not None else "classification")
    if data_dir is not None and spec.dataset.csv is not None:
        problems.extend(csv_problems(spec.dataset.csv, data_dir))
    return problems


def _recipe(spec: api.TrainingJobSpec, problems: list[str]) -> tuple[type | None, EstimatorRecipe | None]:
    """(class, recipe); None for what does not resolve, its problems recorded (each parameter on its own)."""
    path, params = spec.estimator.class_, spec.estimator.params
    try:
        cls = resolve_estimator_class(path)
    except InvalidSpec as e:
        problems.append(str(e))
        return None, None
    return cls, _checked_recipe(cls, path, params, problems)


def _checked_recipe(cls: type, path: str, params: dict[str, Any], problems: list[str]) -> EstimatorRecipe | None:
    good: dict[str, Any] = {}
    for name, value in params.items():
        try:
            check_param_names(cls, path, [name], "spec.estimator.params")
            materialize(value, f"spec.estimator.params.{name}")
        except InvalidSpec as e:
            problems.append(str(e))
            continue
        good[name] = value
    base = EstimatorRecipe(path=path, cls=cls, params={}, task="")
    alone_ok: dict[str, Any] = {}
    for name, value in good.items():
        try:
            check_param_values(base, {name: value}, f"spec.estimator.params.{name}")
        except InvalidSpec as e:
            if "cannot be constructed" not in str(e):  # required arguments: judged all together below
                problems.append(str(e))
                continue
        alone_ok[name] = value
    if len(alone_ok) != len(params):
        return None
    try:
        built = {k: materialize(v, f"spec.estimator.params.{k}") for k, v in params.items()}
        probe = cls(**built)
    except TypeError as e:
        problems.append(f"spec.estimator: {path} cannot be constructed from spec.estimator.params: {e}")
        return None
    except InvalidSpec as e:
        problems.append(str(e))
        return None
    try:
        recipe = EstimatorRecipe(path=path, cls=cls, params=dict(params), task=task_of(probe, path))
        check_param_values(recipe, {}, "spec.estimator.params")
        check_single_output(probe, path)
    except InvalidSpec as e:
        problems.append(str(e))
        return None
    return recipe


def csv_problems(source: api.CsvDataset, data_dir: Path) -> list[str]:
    """The CSV file exists under ``data_dir`` and its header names the target column."""
    path = Path(data_dir) / source.path
    where = f"spec.dataset.csv.path {source.path!r} (looked for {path})"
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            header = next(csv.reader(f), None)
    except FileNotFoundError:
        return [f"{where}: file not found"]
    except IsADirectoryError:
        return [f"{where}: is a directory, expected a CSV file"]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        return [f"{where}: cannot be read as CSV: {e}"]
    columns = [h.strip() for h in header or []]
    if not columns:
        return [f"{where}: the file is empty, expected a header row and data rows"]
    if source.target not in columns:
        import difflib

        close = difflib.get_close_matches(source.target, columns, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return [
            f"spec.dataset.csv.target: column {source.target!r} is not in {source.path}{hint}; "
            f"columns are: {', '.join(columns)}"
        ]
    return []
