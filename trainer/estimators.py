"""From ``estimator.class`` and ``estimator.params`` to a scikit-learn estimator, refusing early.

Everything that can be checked before loading data or fitting is checked here, and each
refusal is an :class:`InvalidSpec` naming the class or parameter and what is allowed:

- the class path must be allowlisted (:mod:`mlvisor.trainer.allowlist`), must exist, and
  must be a classifier or a regressor (the server serves predictions of those two tasks);
- every key of ``params`` and of ``search.grid`` must be a constructor parameter of the
  class, and every value must pass scikit-learn's own parameter validation;
- ``search.scoring`` must be a scikit-learn scorer name.

Values that only fail at fit time (combinations sklearn checks inside ``fit``) are caught
by :func:`fit_checked`, which turns sklearn's ``ValueError``/``InvalidParameterError``
raised by ``fit`` into an InvalidSpec too: training is deterministic, so retrying would
fail the same way.
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass
from typing import Any

from mlvisor.trainer.allowlist import allowed_summary, is_allowed_estimator_path, is_trusted_type
from mlvisor.trainer.spec import InvalidSpec

DEFAULT_SCORING = {"classification": "accuracy", "regression": "r2"}


@dataclass(frozen=True)
class EstimatorRecipe:
    """A validated estimator class with its base params; builds fresh estimators on demand."""

    path: str
    cls: type
    params: dict[str, Any]
    task: str
    """classification or regression."""

    def build(self, overrides: dict[str, Any] | None = None) -> Any:
        return self.cls(**{**self.params, **(overrides or {})})

    def param_names(self) -> list[str]:
        return sorted(self.cls._get_param_names())


def resolve_estimator_class(path: str) -> type:
    """Import an allowlisted sklearn class by dotted path, or raise InvalidSpec saying why not."""
    if not is_allowed_estimator_path(path):
        raise InvalidSpec(
            f"spec.estimator.class {path!r} is not allowed: expected {allowed_summary()} "
            "(e.g. sklearn.ensemble.RandomForestClassifier)"
        )
    module_name, _, class_name = path.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        raise InvalidSpec(
            f"spec.estimator.class {path!r}: module {module_name} does not exist in scikit-learn"
        ) from None
    cls = getattr(module, class_name, None)
    if cls is None:
        public = [n for n in getattr(module, "__all__", dir(module)) if n[:1].isupper()]
        close = difflib.get_close_matches(class_name, public, n=3)
        hint = f"; did you mean {', '.join(module_name + '.' + c for c in close)}?" if close else ""
        raise InvalidSpec(
            f"spec.estimator.class {path!r}: {module_name} has no class {class_name!r}{hint}"
        )
    from sklearn.base import BaseEstimator

    if not isinstance(cls, type) or not issubclass(cls, BaseEstimator):
        raise InvalidSpec(
            f"spec.estimator.class {path!r} is not a scikit-learn estimator class"
        )
    if not is_trusted_type(f"{cls.__module__}.{cls.__qualname__}"):
        # a re-export of something defined outside the allowlisted subpackages
        raise InvalidSpec(
            f"spec.estimator.class {path!r} is defined in {cls.__module__}, outside the "
            f"allowlist: expected {allowed_summary()}"
        )
    return cls


def task_of(estimator: Any, path: str) -> str:
    from sklearn.base import is_classifier, is_regressor

    if is_classifier(estimator):
        return "classification"
    if is_regressor(estimator):
        return "regression"
    raise InvalidSpec(
        f"spec.estimator.class {path!r} is neither a classifier nor a regressor; mlvisor trains "
        "and serves classifiers (e.g. sklearn.ensemble.RandomForestClassifier) and regressors "
        "(e.g. sklearn.linear_model.Ridge)"
    )


def check_param_names(cls: type, path: str, names: list[str], field: str) -> None:
    valid = sorted(cls._get_param_names())
    for name in names:
        if name not in valid:
            close = difflib.get_close_matches(name, valid, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise InvalidSpec(
                f"{field}.{name} is not a parameter of {path}{hint}; valid parameters: "
                + ", ".join(valid)
            )


def check_param_values(recipe: EstimatorRecipe, overrides: dict[str, Any], field: str) -> None:
    """Construct and run sklearn's own parameter validation (what ``fit`` would check first)."""
    try:
        est = recipe.build(overrides)
    except TypeError as e:
        raise InvalidSpec(f"{field}: {recipe.path} cannot be constructed: {e}") from None
    validate = getattr(est, "_validate_params", None)
    if validate is None:
        return
    from sklearn.utils._param_validation import InvalidParameterError

    try:
        validate()
    except InvalidParameterError as e:
        raise InvalidSpec(f"{field}: {e}") from None


def make_recipe(path: str, params: dict[str, Any]) -> EstimatorRecipe:
    cls = resolve_estimator_class(path)
    check_param_names(cls, path, list(params), "spec.estimator.params")
    try:
        probe = cls(**params)
    except TypeError as e:
        raise InvalidSpec(
            f"spec.estimator: {path} cannot be constructed from spec.estimator.params: {e}"
        ) from None
    recipe = EstimatorRecipe(path=path, cls=cls, params=dict(params), task=task_of(probe, path))
    check_param_values(recipe, {}, "spec.estimator.params")
    return recipe


def check_grid(recipe: EstimatorRecipe, grid: dict[str, list[Any]]) -> None:
    """Every grid key is a parameter; every single value passes validation on its own."""
    check_param_names(recipe.cls, recipe.path, list(grid), "spec.search.grid")
    for name, values in grid.items():
        for value in values:
            check_param_values(recipe, {name: value}, f"spec.search.grid.{name} value {value!r}")


def resolve_scoring(scoring: str | None, task: str) -> str:
    from sklearn.metrics import get_scorer_names

    if scoring is None:
        return DEFAULT_SCORING[task]
    names = sorted(get_scorer_names())
    if scoring not in names:
        close = difflib.get_close_matches(scoring, names, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise InvalidSpec(
            f"spec.search.scoring {scoring!r} is not a scikit-learn scorer{hint}; valid: "
            + ", ".join(names)
        )
    return scoring


def fit_checked(estimator: Any, X: Any, y: Any, path: str) -> Any:
    """``estimator.fit`` with sklearn's parameter/data refusals turned into InvalidSpec."""
    try:
        return estimator.fit(X, y)
    except ValueError as e:  # InvalidParameterError is a ValueError
        raise InvalidSpec(
            f"spec.estimator: {path} refused the parameters or data at fit time: {e}"
        ) from e
