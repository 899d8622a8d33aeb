"""From ``estimator.class`` and ``estimator.params`` to a scikit-learn estimator, refusing early.

Everything that can be checked before loading data or fitting is checked here, and each
refusal is an :class:`InvalidSpec` naming the class or parameter and what is allowed:

- the class path must be allowlisted (:mod:`mlvisor.trainer.allowlist`), must exist, and
  must be a classifier or a regressor (the server serves predictions of those two tasks)
  that fits one target column (mlvisor trains on one);
- every key of ``params`` and of ``search.grid`` must be a constructor parameter of the
  class, and every value must pass scikit-learn's own parameter validation;
- ``search.scoring`` must be a scikit-learn scorer name.

Meta-estimators (Bagging, Voting, Stacking, Pipeline, OneVsRest, CalibratedClassifierCV, ...)
take estimators as parameters. In ``params`` (and in grid values) a mapping with the key
``class`` and, optionally, ``params`` is such an estimator, checked by the same rules, e.g.::

    class: sklearn.ensemble.VotingClassifier
    params:
      voting: soft
      estimators:
        - [tree, {class: sklearn.tree.DecisionTreeClassifier, params: {max_depth: 3}}]
        - [linear, {class: sklearn.linear_model.LogisticRegression}]

A ``[name, estimator]`` pair becomes the ``(name, estimator)`` tuple scikit-learn expects,
and grid keys may address nested parameters the scikit-learn way (``estimator__max_depth``).

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
#: How deep estimators may nest inside params (a Pipeline in a Bagging in a Voting is 3).
MAX_NESTING = 4
_ESTIMATOR_KEYS = frozenset({"class", "params"})


@dataclass(frozen=True)
class EstimatorRecipe:
    """A validated estimator class with its base params; builds fresh estimators on demand."""

    path: str
    cls: type
    params: dict[str, Any]
    """As written in the spec (nested estimators still as {class, params} mappings)."""
    task: str
    """classification or regression."""
    classes: tuple[Any, ...] | None = None
    """The target's class labels, once known: the keys of ``class_weight`` mappings (any depth)
    are mapped to them (:mod:`mlvisor.trainer.classlabels`)."""
    preprocessing: Any = None
    """A :class:`mlvisor.trainer.tables.Preprocessing`, once the data is known to be a table with
    categorical columns or missing values: :meth:`build` then returns the Pipeline of it and the
    estimator (grid keys still name the estimator's parameters)."""

    def build(self, overrides: dict[str, Any] | None = None) -> Any:
        """A fresh model to fit: the estimator (:meth:`build_estimator`), behind its preprocessing if any."""
        est = self.build_estimator(overrides)
        return est if self.preprocessing is None else self.preprocessing.wrap(est)

    def build_estimator(self, overrides: dict[str, Any] | None = None) -> Any:
        """A fresh estimator: params (nested estimators built anew), then the overrides set on it."""
        overrides = overrides or {}
        top = {k: v for k, v in overrides.items() if "__" not in k}
        est = self.cls(
            **{k: materialize(v, f"spec.estimator.params.{k}") for k, v in {**self.params, **top}.items()}
        )
        deep = {k: materialize(v, f"spec.search.grid.{k}") for k, v in overrides.items() if "__" in k}
        if deep:
            est.set_params(**deep)
        if self.classes:
            from mlvisor.trainer.classlabels import relabel

            relabel(est, self.classes)
        return est

    def param_names(self) -> list[str]:
        return sorted(self.cls._get_param_names())  # type: ignore[attr-defined]  # every sklearn estimator has it


def is_estimator_spec(value: Any) -> bool:
    """A params value that describes an estimator: {class: ..., params: {...}}."""
    return isinstance(value, dict) and "class" in value and set(value) <= _ESTIMATOR_KEYS


def materialize(value: Any, field: str, depth: int = 0) -> Any:
    """A params value with every nested estimator spec replaced by a fresh, checked estimator."""
    if is_estimator_spec(value):
        if depth >= MAX_NESTING:
            raise InvalidSpec(f"{field}: estimators nest more than {MAX_NESTING} deep")
        path = value["class"]
        if not isinstance(path, str):
            raise InvalidSpec(f"{field}.class: expected a class path string, got {type(path).__name__}")
        params = value.get("params") or {}
        if not isinstance(params, dict):
            raise InvalidSpec(f"{field}.params: expected a mapping of parameters, got {type(params).__name__}")
        cls = resolve_estimator_class(path, f"{field}.class")
        check_param_names(cls, path, list(params), f"{field}.params")
        built = {k: materialize(v, f"{field}.params.{k}", depth + 1) for k, v in params.items()}
        try:
            est = cls(**built)
        except TypeError as e:
            raise InvalidSpec(f"{field}: {path} cannot be constructed: {e}") from None
        _validate(est, f"{field}.params")
        return est
    if isinstance(value, list):
        out = []
        for i, v in enumerate(value):
            item = materialize(v, f"{field}[{i}]", depth)
            if (
                isinstance(v, list) and len(v) == 2 and isinstance(v[0], str)
                and (is_estimator_spec(v[1]) or v[1] in ("drop", "passthrough"))
            ):
                item = tuple(item)  # a (name, estimator) pair, as Pipeline/Voting/Stacking take them
            out.append(item)
        return out
    if isinstance(value, dict):
        return {k: materialize(v, f"{field}.{k}", depth) for k, v in value.items()}
    return value


def _validate(est: Any, field: str) -> None:
    """scikit-learn's own parameter validation (what ``fit`` checks first)."""
    validate = getattr(est, "_validate_params", None)
    if validate is None:
        return
    from sklearn.utils._param_validation import InvalidParameterError

    try:
        validate()
    except InvalidParameterError as e:
        raise InvalidSpec(f"{field}: {e}") from None


def resolve_estimator_class(path: str, field: str = "spec.estimator.class") -> type:
    """Import an allowlisted sklearn class by dotted path, or raise InvalidSpec saying why not."""
    if not is_allowed_estimator_path(path):
        raise InvalidSpec(
            f"{field} {path!r} is not allowed: expected {allowed_summary()} "
            "(e.g. sklearn.ensemble.RandomForestClassifier)"
        )
    module_name, _, class_name = path.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        raise InvalidSpec(
            f"{field} {path!r}: module {module_name} does not exist in scikit-learn"
        ) from None
    cls = getattr(module, class_name, None)
    if cls is None:
        public = [n for n in getattr(module, "__all__", dir(module)) if n[:1].isupper()]
        close = difflib.get_close_matches(class_name, public, n=3)
        hint = f"; did you mean {', '.join(module_name + '.' + c for c in close)}?" if close else ""
        raise InvalidSpec(
            f"{field} {path!r}: {module_name} has no class {class_name!r}{hint}"
        )
    from sklearn.base import BaseEstimator

    if not isinstance(cls, type) or not issubclass(cls, BaseEstimator):
        raise InvalidSpec(
            f"{field} {path!r} is not a scikit-learn estimator class"
        )
    if not is_trusted_type(f"{cls.__module__}.{cls.__qualname__}"):
        # a re-export of something defined outside the allowlisted subpackages
        raise InvalidSpec(
            f"{field} {path!r} is defined in {cls.__module__}, outside the "
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


def check_param_names(cls: type, path: str, names: list[str], field: str, deep: Any = None) -> None:
    """Every name is a constructor parameter (or, with ``deep`` an estimator, a nested one: a__b)."""
    valid = sorted(cls._get_param_names())  # type: ignore[attr-defined]  # every sklearn estimator has it
    nested = sorted(k for k in deep.get_params(deep=True) if "__" in k) if deep is not None else []
    for name in names:
        if name in valid or name in nested:
            continue
        if "__" in name and deep is not None:
            close = difflib.get_close_matches(name, nested, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise InvalidSpec(f"{field}.{name} is not a nested parameter of {path}{hint}")
        close = difflib.get_close_matches(name, valid, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise InvalidSpec(
            f"{field}.{name} is not a parameter of {path}{hint}; valid parameters: "
            + ", ".join(valid)
        )


def check_param_values(recipe: EstimatorRecipe, overrides: dict[str, Any], field: str) -> None:
    """Construct and run sklearn's own parameter validation (what ``fit`` would check first)."""
    try:
        est = recipe.build_estimator(overrides)
    except InvalidSpec:
        raise
    except (TypeError, ValueError) as e:
        raise InvalidSpec(f"{field}: {recipe.path} cannot be constructed: {e}") from None
    _validate(est, field)
    for name in overrides:
        if "__" in name:  # a nested estimator's parameter: validate the estimator it belongs to
            owner = est.get_params(deep=True).get(name.rsplit("__", 1)[0])
            if owner is not None and hasattr(owner, "get_params"):
                _validate(owner, field)


def make_recipe(path: str, params: dict[str, Any]) -> EstimatorRecipe:
    cls = resolve_estimator_class(path)
    check_param_names(cls, path, list(params), "spec.estimator.params")
    built = {k: materialize(v, f"spec.estimator.params.{k}") for k, v in params.items()}
    try:
        probe = cls(**built)
    except TypeError as e:
        raise InvalidSpec(
            f"spec.estimator: {path} cannot be constructed from spec.estimator.params: {e}"
        ) from None
    recipe = EstimatorRecipe(path=path, cls=cls, params=dict(params), task=task_of(probe, path))
    check_param_values(recipe, {}, "spec.estimator.params")
    check_single_output(probe, path)
    return recipe


def check_single_output(estimator: Any, path: str) -> None:
    """mlvisor trains on one target column: estimators that need several are refused up front."""
    from sklearn.utils import get_tags

    try:
        single = get_tags(estimator).target_tags.single_output
    except Exception:  # an estimator without tags: let fit decide
        return
    if single:
        return
    name = path.rsplit(".", 1)[-1]
    plain = name.replace("MultiTask", "")
    suggestion = f" such as {path.rsplit('.', 1)[0]}.{plain}" if plain != name else ""
    raise InvalidSpec(
        f"spec.estimator.class {path!r} needs a target of several columns (multi-output); mlvisor "
        f"trains on one target column: choose a single-output estimator{suggestion}"
    )


def check_grid(recipe: EstimatorRecipe, grid: dict[str, list[Any]]) -> None:
    """Every grid key is a parameter; every single value passes validation on its own."""
    check_param_names(recipe.cls, recipe.path, list(grid), "spec.search.grid", deep=recipe.build_estimator())
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
