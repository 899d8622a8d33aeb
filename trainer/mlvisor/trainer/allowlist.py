"""Which scikit-learn classes a TrainingJob may name, and which types an artifact may contain.

One list serves two purposes: the trainer refuses estimator classes outside it, and the
artifact loader derives skops' trusted types from it, so a model file can only ever
instantiate types from the same sklearn subpackages a spec could have asked for.
Pure data: importing this module imports no sklearn.
"""

from __future__ import annotations

#: sklearn subpackages whose public estimator classes may be trained and loaded.
ALLOWED_SUBPACKAGES: frozenset[str] = frozenset(
    {
        "calibration",
        "compose",
        "cross_decomposition",
        "discriminant_analysis",
        "dummy",
        "ensemble",
        "gaussian_process",
        "impute",
        "isotonic",
        "kernel_approximation",
        "kernel_ridge",
        "linear_model",
        "multiclass",
        "multioutput",
        "naive_bayes",
        "neighbors",
        "neural_network",
        "pipeline",
        "preprocessing",
        "svm",
        "tree",
    }
)


def subpackage_of(dotted: str) -> str | None:
    """``sklearn.ensemble._forest.X`` -> ``ensemble``; None when not under sklearn."""
    parts = dotted.split(".")
    if len(parts) < 3 or parts[0] != "sklearn":
        return None
    return parts[1]


def is_allowed_estimator_path(dotted: str) -> bool:
    """A public class path a spec may name: sklearn.<allowed subpackage>.<Class>, no private parts."""
    parts = dotted.split(".")
    return (
        subpackage_of(dotted) in ALLOWED_SUBPACKAGES
        and all(p and not p.startswith("_") for p in parts)
        and parts[-1][:1].isupper()
    )


#: Modules outside the allowed subpackages whose types are fitted state of allowed estimators:
#: the distance metric objects of sklearn.neighbors estimators, the loss objects of the
#: generalised linear models (TweedieRegressor), and the Bunch (a dict with attribute access)
#: in which Voting and Stacking keep their named estimators. Without them those models could
#: be trained but never loaded back. Data-only types; nothing here runs code on load.
SUPPORT_MODULES: tuple[str, ...] = ("sklearn.metrics._dist_metrics", "sklearn._loss", "sklearn.utils._bunch")


#: Single types outside sklearn that fitted preprocessing keeps: the ``dtype`` parameter of
#: OneHotEncoder and OrdinalEncoder (``numpy.float64``) is stored by skops as a numpy.dtype,
#: which skops does not trust by default. A dtype is data (a name like "float64"); building
#: one runs no code of the file's choosing. HistGradientBoosting with categorical features
#: keeps a ColumnTransformer of its own whose numeric part is a FunctionTransformer of
#: ``functools.partial(sklearn.utils.validation.check_array, ...)``: the partial only binds
#: arguments to a function that must itself be trusted, and check_array only validates an array.
SUPPORT_TYPES: frozenset[str] = frozenset({"numpy.dtype", "functools.partial", "sklearn.utils.validation.check_array"})


def is_trusted_type(dotted: str) -> bool:
    """A type skops may instantiate when loading an artifact.

    Anything under an allowed subpackage, plus the support types of :data:`SUPPORT_MODULES`
    and :data:`SUPPORT_TYPES`.
    """
    if dotted in SUPPORT_TYPES or any(dotted.startswith(m + ".") for m in SUPPORT_MODULES):
        return True
    return subpackage_of(dotted) in ALLOWED_SUBPACKAGES


def allowed_summary() -> str:
    """For error messages: what may be named."""
    return "a public class under sklearn." + "|".join(sorted(ALLOWED_SUBPACKAGES))
