"""Estimator parameters whose mapping keys are class labels: ``class_weight: {0: 1, 1: 2}``.

A user writes ``class_weight: {0: 1, 1: 2, 2: 1}`` for iris, or ``{setosa: 1, versicolor: 2}``
for string labels. The keys never reach scikit-learn as written: YAML read into JSON (by
kubectl, by the API server, and by ``MLVISOR_SPEC`` locally) makes every mapping key a
string, and scikit-learn then finds none of the classes ``[0, 1, 2]`` in ``{"0": 1, ...}``.
So the keys are mapped to the labels' actual values at fit time, once the target is known
(:func:`relabel`, called by :meth:`EstimatorRecipe.build`), and a key that is no class label
of the target is refused before any fitting (:func:`class_label_problems`), naming the field.

Which parameters: every one named ``class_weight`` (scikit-learn's only parameter keyed by
class label), at any depth: on the estimator, on estimators nested in its params
(``estimator``, ``estimators``, ``steps``, ``final_estimator``), and in grid values, top-level
or nested (``model__class_weight``). A key matches a label when it reads the same
(``"0"`` and ``0``, ``"setosa"``), or, for integer labels, when it is the same number (``1.0``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from mlvisor.trainer.estimators import is_estimator_spec

#: The last segment of a parameter name whose mapping is keyed by class label.
CLASS_KEYED_PARAMS = frozenset({"class_weight"})


def keyed_by_class(name: str) -> bool:
    """``class_weight``, or a nested one (``model__class_weight``)."""
    return name.rsplit("__", 1)[-1] in CLASS_KEYED_PARAMS


def label_of(key: Any, classes: Sequence[Any]) -> tuple[bool, Any]:
    """(True, the class label ``key`` names) or (False, None)."""
    if isinstance(key, bool):  # YAML's yes/no: never a class label
        return False, None
    for c in classes:
        if key == c or str(key) == str(c):
            return True, c
    if all(isinstance(c, int) for c in classes):
        try:
            number = float(key)
        except (TypeError, ValueError):
            return False, None
        for c in classes:
            if number == c:
                return True, c
    return False, None


def to_labels(mapping: Mapping[Any, Any], classes: Sequence[Any]) -> dict[Any, Any]:
    """``mapping`` with each key that names a class replaced by that class label."""
    out: dict[Any, Any] = {}
    for key, value in mapping.items():
        found, label = label_of(key, classes)
        out[label if found else key] = value
    return out


def relabel(estimator: Any, classes: Sequence[Any]) -> None:
    """Map the keys of every class-keyed mapping parameter of ``estimator`` (nested ones too)."""
    params = estimator.get_params(deep=True)
    updates = {
        name: to_labels(value, classes)
        for name, value in params.items()
        if keyed_by_class(name) and isinstance(value, Mapping)
    }
    if updates:
        estimator.set_params(**updates)


def class_keyed_fields(params: Any, field: str) -> Iterator[tuple[str, Mapping[Any, Any]]]:
    """(field path, mapping) of every class-keyed mapping in raw spec ``params``, nested ones included."""
    if is_estimator_spec(params):
        inner = params.get("params")
        if isinstance(inner, Mapping):
            yield from class_keyed_fields(inner, f"{field}.params")
        return
    if isinstance(params, Mapping):
        for name, value in params.items():
            if isinstance(name, str) and keyed_by_class(name) and isinstance(value, Mapping):
                yield f"{field}.{name}", value
            else:
                yield from class_keyed_fields(value, f"{field}.{name}")
    elif isinstance(params, list):
        for i, value in enumerate(params):
            yield from class_keyed_fields(value, f"{field}[{i}]")


def grid_class_keyed_fields(grid: Mapping[str, Sequence[Any]]) -> Iterator[tuple[str, Mapping[Any, Any]]]:
    """The same for a search grid: ``spec.search.grid.<name> value <value>`` as the grid checks name them."""
    for name, values in grid.items():
        for value in values:
            where = f"spec.search.grid.{name} value {value!r}"
            if keyed_by_class(name) and isinstance(value, Mapping) and not is_estimator_spec(value):
                yield where, value
            else:
                yield from class_keyed_fields(value, where)


def _labels(classes: Sequence[Any]) -> str:
    shown = ", ".join(repr(c) if isinstance(c, str) else str(c) for c in classes[:20])
    return shown + (f", ... ({len(classes)} in all)" if len(classes) > 20 else "")


def check_keys(mapping: Mapping[Any, Any], classes: Sequence[Any], field: str) -> list[str]:
    """Every key names a class label of the target and every weight is a number."""
    problems = []
    unknown = [k for k in mapping if not label_of(k, classes)[0]]
    if unknown:
        keys = ", ".join(repr(k) for k in unknown)
        what = f"key {keys} is not a class label" if len(unknown) == 1 else f"keys {keys} are not class labels"
        problems.append(f"{field}: {what} of the target (the classes are {_labels(classes)})")
    for key, weight in mapping.items():
        if isinstance(weight, bool) or not isinstance(weight, int | float):
            problems.append(f"{field}: the weight of class {key!r} is {weight!r}; expected a number")
    return problems


def class_label_problems(params: Mapping[str, Any], grid: Mapping[str, Sequence[Any]] | None,
                         classes: Sequence[Any]) -> list[str]:
    """Every class-keyed mapping of the estimator's params and of the grid, checked against ``classes``."""
    problems: list[str] = []
    for field, mapping in class_keyed_fields(params, "spec.estimator.params"):
        problems += check_keys(mapping, classes, field)
    for field, mapping in grid_class_keyed_fields(grid or {}):
        problems += check_keys(mapping, classes, field)
    return problems
