"""spec.search.distributions: draws for a Random search, Optuna distributions for a Bayesian one, checks.

A distribution is exactly one of (the API enforces it)::

    {choice: [v1, v2, ...]}          each value equally likely (any value a grid takes)
    {uniform: {low, high}}           real numbers, scipy.stats.uniform(low, high - low)
    {loguniform: {low, high}}        positive reals, even on a log scale, scipy.stats.loguniform
    {randint: {low, high}}           integers low <= n < high, scipy.stats.randint (high exclusive)

**Random** draws ``nTrials`` parameter sets with scikit-learn's own ``ParameterSampler`` seeded
by ``randomState`` (parameter names in sorted order, the scipy distributions above, choices
picked by index so any value works), so every shard and every restart computes the same list
of trials. When every distribution is a choice, ParameterSampler draws combinations without
replacement, hence at most as many trials as there are combinations (``Search.trial_count``).

**Bayesian** asks Optuna's TPE for each value through the matching Optuna distribution: a
choice is a categorical over the JSON text of each value (so estimators, lists and null are
fine), uniform and loguniform are float distributions on [low, high] (Optuna's are closed),
randint an integer distribution on [low, high - 1].

**Checks** apply scikit-learn's own parameter constraints (``_parameter_constraints``) to what a
distribution can produce: every choice, like a grid value; for uniform and loguniform both
bounds (the constraints are intervals and type sets, so the ends decide); for randint the
lowest and the highest integer drawn. A float distribution for an integer parameter is refused
here, naming the field, rather than at fit time.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from mlvisor import api
from mlvisor.trainer.estimators import EstimatorRecipe, check_param_names, check_param_values
from mlvisor.trainer.spec import InvalidSpec

FIELD = "spec.search.distributions"


def kind_of(dist: api.Distribution) -> str:
    for kind in ("choice", "uniform", "loguniform", "randint"):
        if getattr(dist, kind) is not None:
            return kind
    raise ValueError("empty distribution")  # the API refuses it before this


def scipy_distribution(dist: api.Distribution) -> Any:
    """What ParameterSampler draws from: a list (choice) or a frozen scipy distribution."""
    from scipy import stats

    if dist.choice is not None:
        return list(dist.choice)
    if dist.uniform is not None:
        return stats.uniform(loc=dist.uniform.low, scale=dist.uniform.high - dist.uniform.low)
    if dist.loguniform is not None:
        return stats.loguniform(dist.loguniform.low, dist.loguniform.high)
    assert dist.randint is not None
    return stats.randint(dist.randint.low, dist.randint.high)


def _plain(value: Any, dist: api.Distribution) -> Any:
    """numpy scalars as the Python numbers JSON and scikit-learn's checks expect."""
    if dist.choice is not None:
        return copy.deepcopy(value)
    if dist.randint is not None:
        return int(value)
    return float(value)


def sample_params(distributions: dict[str, api.Distribution], n_trials: int, seed: int) -> list[dict[str, Any]]:
    """The parameter sets of a Random search: the same on every machine, shard and restart."""
    import warnings

    from sklearn.model_selection import ParameterSampler

    space = {name: scipy_distribution(d) for name, d in distributions.items()}
    with warnings.catch_warnings():
        # all-choice spaces smaller than n_trials: the sampler says so and draws each combination once
        warnings.simplefilter("ignore", UserWarning)
        drawn = list(ParameterSampler(space, n_iter=n_trials, random_state=seed))
    return [{name: _plain(params[name], distributions[name]) for name in sorted(params)} for params in drawn]


def optuna_distribution(dist: api.Distribution) -> Any:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if dist.choice is not None:
        return CategoricalDistribution([json.dumps(v, sort_keys=True) for v in dist.choice])
    if dist.uniform is not None:
        return FloatDistribution(dist.uniform.low, dist.uniform.high)
    if dist.loguniform is not None:
        return FloatDistribution(dist.loguniform.low, dist.loguniform.high, log=True)
    assert dist.randint is not None
    return IntDistribution(dist.randint.low, dist.randint.high - 1)


def suggest(trial: Any, name: str, dist: api.Distribution) -> Any:
    """The value Optuna's sampler chooses for ``name`` in ``trial`` (a fixed value for a retried trial)."""
    if dist.choice is not None:
        labels = [json.dumps(v, sort_keys=True) for v in dist.choice]
        return json.loads(trial.suggest_categorical(name, labels))
    if dist.uniform is not None:
        return float(trial.suggest_float(name, dist.uniform.low, dist.uniform.high))
    if dist.loguniform is not None:
        return float(trial.suggest_float(name, dist.loguniform.low, dist.loguniform.high, log=True))
    assert dist.randint is not None
    return int(trial.suggest_int(name, dist.randint.low, dist.randint.high - 1))


def external_params(params: dict[str, Any], distributions: dict[str, api.Distribution]) -> dict[str, Any]:
    """A parameter set in Optuna's terms (choices as their JSON text), e.g. to enqueue a retry."""
    return {name: json.dumps(v, sort_keys=True) if distributions[name].choice is not None else v
            for name, v in params.items()}


def probe_values(dist: api.Distribution) -> list[tuple[str, Any]]:
    """(where, value) pairs whose validity decides the whole distribution's (see the module docstring)."""
    if dist.choice is not None:
        return [(f"choice value {v!r}", v) for v in dist.choice]
    if dist.uniform is not None:
        return [(f"uniform.low value {dist.uniform.low!r}", float(dist.uniform.low)),
                (f"uniform.high value {dist.uniform.high!r}", float(dist.uniform.high))]
    if dist.loguniform is not None:
        return [(f"loguniform.low value {dist.loguniform.low!r}", float(dist.loguniform.low)),
                (f"loguniform.high value {dist.loguniform.high!r}", float(dist.loguniform.high))]
    assert dist.randint is not None
    top = dist.randint.high - 1
    return [(f"randint.low value {dist.randint.low!r}", int(dist.randint.low)),
            (f"randint.high value {dist.randint.high!r} (largest drawn: {top})", int(top))]


def distribution_problems(recipe: EstimatorRecipe, distributions: dict[str, api.Distribution]) -> list[str]:
    """Every problem of the distributions, each naming its field: unknown parameters, values
    scikit-learn refuses (e.g. ``spec.search.distributions.max_features.uniform.high value 1.5:
    The 'max_features' parameter of RandomForestClassifier must be ...``)."""
    problems: list[str] = []
    deep = recipe.build()
    for name, dist in distributions.items():
        try:
            check_param_names(recipe.cls, recipe.path, [name], FIELD, deep=deep)
        except InvalidSpec as e:
            problems.append(str(e))
            continue
        for where, value in probe_values(dist):
            try:
                check_param_values(recipe, {name: value}, f"{FIELD}.{name}.{where}")
            except InvalidSpec as e:
                text = str(e)
                if isinstance(value, float) and "must be an int" in text and "a float" not in text:
                    kind = kind_of(dist)
                    problems.append(f"{FIELD}.{name}.{kind} draws real numbers, but {text.split(': ', 1)[1]} "
                                    f"For an integer parameter use {{randint: {{low, high}}}} (high exclusive).")
                    break  # the other bound says the same
                problems.append(text)
    return problems


def check_distributions(recipe: EstimatorRecipe, distributions: dict[str, api.Distribution]) -> None:
    problems = distribution_problems(recipe, distributions)
    if problems:
        raise InvalidSpec("; ".join(problems))
