"""Everything that can be known about a TrainingJob before fitting, every problem listed.

One judge, :func:`judge`, called everywhere a spec is judged, so a spec gets the same
verdict in the same words wherever it is asked about: ``mlvisor validate`` and ``mlvisor
run`` (builtin datasets always, CSV files with ``--data-dir``), the operator's pre-flight
check before it creates any pod (builtin datasets: it cannot see the files on the claims),
and the trainer itself before it fits anything (which sees everything, and then trains on
what the judge loaded and split). Each problem names the field, the value given and what was
expected, in scikit-learn's own terms where scikit-learn has them:

- the estimator: the class resolves inside the allowlist (did-you-mean for typos), it is a
  classifier or a regressor for one target column, every parameter exists (did-you-mean) and
  each value passes scikit-learn's parameter validation on its own, then all together;
- the search: every grid key exists and every grid value passes; every distribution's key
  exists and what it can draw passes (its choices, the bounds of a range:
  :mod:`mlvisor.trainer.distributions`); the scoring is a scorer;
- the data (:mod:`mlvisor.trainer.datasets`): the CSV file, its columns and cells; the target
  fits the task (class labels for a classifier, numbers for a regressor, with a suggestion of
  the other kind of estimator); the keys of every ``class_weight`` are class labels of the
  target (:mod:`mlvisor.trainer.classlabels`); the rows split into train and test
  (``testSize``) and the training rows into ``search.cv`` folds.

Problems are found independently where they are independent, so a file with a typo in a
parameter name *and* a classifier on a continuous target gets both; a check that needs
something that is itself wrong (a class that does not resolve, a file that cannot be read)
is skipped, that something's own problem says why. :class:`SpecParts` is what the judge
reads: the parts of a spec that are valid, so a document whose schema is wrong somewhere is
still judged on everything else (``mlvisor validate`` lists both kinds of problems at once).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, TypeAdapter, ValidationError

from mlvisor import api
from mlvisor.trainer.classlabels import class_label_problems
from mlvisor.trainer.datasets import DataRead, Target, TrainingData, prepare_target, read_dataset
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
from mlvisor.trainer.search import cv_splits
from mlvisor.trainer.spec import InvalidSpec
from mlvisor.trainer.tables import Preprocessing, default_encoding


@dataclass(frozen=True)
class SpecParts:
    """The parts of a TrainingJob spec the judge reads; None for a part that is absent or invalid
    (the checks that need it are skipped: the schema's own error names it)."""

    estimator: api.Estimator | None
    dataset: api.Dataset | None
    search: api.Search | None
    test_size: float | None
    random_state: int | None

    @classmethod
    def of(cls, spec: api.TrainingJobSpec) -> SpecParts:
        return cls(spec.estimator, spec.dataset, spec.search, spec.test_size, spec.random_state)

    @classmethod
    def salvage(cls, raw: Any) -> SpecParts:
        """The parts of a raw spec (camelCase, as written) that are valid each on its own."""
        if not isinstance(raw, Mapping):
            return cls(None, None, None, None, None)
        return cls(
            estimator=_part(api.Estimator, raw, "estimator"),
            dataset=_part(api.Dataset, raw, "dataset"),
            search=_part(api.Search, raw, "search"),
            test_size=_field(raw, "test_size"),
            random_state=_field(raw, "random_state"),
        )


def _part(model: type[BaseModel], raw: Mapping[str, Any], name: str) -> Any:
    """The part with the API server's types (strict JSON, as mlvisor validate and the trainer parse)."""
    if raw.get(name) is None:
        return None
    try:
        return model.model_validate_json(json.dumps(raw[name]), strict=True)
    except (ValidationError, TypeError, ValueError):
        return None


def _field(raw: Mapping[str, Any], name: str) -> Any:
    """A field of TrainingJobSpec validated alone (its own constraints), its default when absent."""
    info = api.TrainingJobSpec.model_fields[name]
    key = info.alias if info.alias is not None and info.alias in raw else name
    if key not in raw:
        return info.get_default(call_default_factory=True)
    try:
        typed: Any = Annotated[info.annotation, *info.metadata] if info.metadata else info.annotation
        return TypeAdapter(typed).validate_json(json.dumps(raw[key]), strict=True)
    except (ValidationError, TypeError, ValueError):
        return None


@dataclass(frozen=True)
class Verdict:
    """The judge's findings; when there is no problem, everything the trainer needs to fit."""

    problems: list[str]
    recipe: EstimatorRecipe | None = None
    """With the target's classes (class_weight keys are mapped to them)."""
    scoring: str | None = None
    """The search's scorer (its default for the task when unset); None without a search."""
    data: TrainingData | None = None
    """What was read; its ``describe()`` says which columns are categorical and which have missing values."""
    target: Target | None = None
    train_rows: np.ndarray | None = None
    test_rows: np.ndarray | None = None
    summary: str | None = None
    """One line on the data read (tables: rows, categorical columns and their encoding, missing
    values), also when other problems were found; None when nothing was read."""


def spec_problems(spec: api.TrainingJobSpec | SpecParts, data_dir: Path | None = None) -> list[str]:
    """Every problem of ``spec``: builtin datasets always, CSV files only with ``data_dir``."""
    return judge(spec, data_dir).problems


def judge(spec: api.TrainingJobSpec | SpecParts, data_dir: Path | None = None,
          env: Mapping[str, str] | None = None) -> Verdict:
    """Judge a spec as the trainer will before fitting; ``data_dir`` is where CSV paths and
    ``pvc://`` uris are relative to (None: tables are not read, as on the operator, which cannot
    see the claims and holds no object-store credentials). ``env`` holds the credentials of an
    ``s3://`` dataset (:mod:`mlvisor.trainer.storage`; default: this process's environment)."""
    parts = spec if isinstance(spec, SpecParts) else SpecParts.of(spec)
    problems: list[str] = []

    def attempt(check: Any, *args: Any) -> Any:
        try:
            return check(*args)
        except InvalidSpec as e:
            problems.append(str(e))
            return None

    cls, recipe = _recipe(parts.estimator, problems) if parts.estimator is not None else (None, None)
    task = recipe.task if recipe is not None else _task_of_class(cls)
    search, scoring = parts.search, None
    grid = search.grid or {} if search is not None else {}
    if search is not None:
        if recipe is not None:
            for name, values in grid.items():
                attempt(check_grid, recipe, {name: values})
            if search.distributions is not None:
                from mlvisor.trainer.distributions import distribution_problems

                problems.extend(distribution_problems(recipe, search.distributions))
        elif cls is not None and parts.estimator is not None:
            _grid_alone(cls, parts.estimator.class_, grid, problems)
        scoring = attempt(resolve_scoring, search.scoring, task or "classification")

    dataset = parts.dataset
    read: DataRead | None = None
    if dataset is not None and (dataset.builtin is not None or data_dir is not None):
        read = read_dataset(dataset, data_dir if data_dir is not None else Path("."), env)
        problems += read.problems
    target = None
    if read is not None and read.y is not None and task is not None:
        path = parts.estimator.class_ if parts.estimator is not None else None
        target = attempt(prepare_target, read.y, task, read.target, path)
    if target is not None and target.classes is not None and parts.estimator is not None:
        problems += class_label_problems(parts.estimator.params, grid if search else None, target.classes)
        if recipe is not None:
            recipe = dataclasses.replace(recipe, classes=tuple(target.classes))
    rows = None
    if target is not None and task is not None and parts.test_size is not None and parts.random_state is not None:
        rows = attempt(split_rows, target.y, task, parts.test_size, parts.random_state)
    if rows is not None and target is not None and search is not None and task is not None and parts.random_state is not None:
        train = rows[0]
        attempt(cv_splits, task, search.cv, parts.random_state, train, target.y[train])
    summary = None
    if read is not None and read.data is not None:
        encoding = None
        if read.data.tabular and recipe is not None:
            assert read.data.columns is not None and dataset is not None
            given = dataset.features.encoding if dataset.features is not None else None
            encoding = given or default_encoding(recipe.path)
            recipe = dataclasses.replace(recipe, preprocessing=Preprocessing(tuple(read.data.columns), encoding))
        summary = read.data.describe(encoding)
    if problems:
        return Verdict(problems, summary=summary)
    assert read is None or read.data is not None
    return Verdict(
        summary=summary,
        problems=[],
        recipe=recipe,
        scoring=scoring,
        data=read.data if read is not None else None,
        target=target,
        train_rows=rows[0] if rows is not None else None,
        test_rows=rows[1] if rows is not None else None,
    )


def split_rows(y: np.ndarray, task: str, test_size: float, random_state: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) row indices: stratified for classifiers when the classes allow it, else a
    plain shuffled split (still deterministic); InvalidSpec when the rows cannot be split."""
    from sklearn.model_selection import train_test_split

    rows = np.arange(len(y))
    stratify = y if task == "classification" else None
    try:
        train, test = train_test_split(rows, test_size=test_size, random_state=random_state, stratify=stratify)
        return train, test
    except ValueError as e:
        if stratify is None:
            raise InvalidSpec(f"spec.testSize {test_size}: cannot split {len(y)} rows: {e}") from e
    # too few rows per class to stratify
    try:
        train, test = train_test_split(rows, test_size=test_size, random_state=random_state)
        return train, test
    except ValueError as e:
        raise InvalidSpec(f"spec.testSize {test_size}: cannot split {len(y)} rows: {e}") from e


def _task_of_class(cls: type | None) -> str | None:
    """The task of a class whose params are wrong, from an instance with its defaults (None if it needs arguments)."""
    if cls is None:
        return None
    try:
        return task_of(cls(), "")
    except Exception:  # a class that needs constructor arguments, or neither task: its own problem says so
        return None


def _grid_alone(cls: type, path: str, grid: dict[str, list[Any]], problems: list[str]) -> None:
    """The params are wrong, but the grid can still be judged on its own."""
    alone = EstimatorRecipe(path=path, cls=cls, params={}, task="")
    for name, values in grid.items():
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


def _recipe(estimator: api.Estimator, problems: list[str]) -> tuple[type | None, EstimatorRecipe | None]:
    """(class, recipe); None for what does not resolve, its problems recorded (each parameter on its own)."""
    path, params = estimator.class_, estimator.params
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
