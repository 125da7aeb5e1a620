"""A study's trials as an in-memory Optuna study, for Optuna's own importance (fANOVA) and plots (slice, contour).

The trials go in with the value they had at one common fidelity (analysis.sensitivity.common_fidelity), so an
ASHA-stopped trial counts with its value at a rung every compared trial reached, not with a value from fewer
epochs than its peers'.
"""
from __future__ import annotations

import warnings

import optuna
import pandas as pd

from search_spaces import SearchSpace

SETTING = "loss_setting"


def _distribution(spec, values: pd.Series):
    """The space's distribution of a parameter, widened to the values the trials hold (a space edited after
    the study must not make its trials invalid)."""
    if spec is not None and spec.type in ("float", "int"):
        low, high = min(spec.low, float(values.min())), max(spec.high, float(values.max()))
        if spec.type == "int":
            return optuna.distributions.IntDistribution(int(low), int(high), log=spec.log)
        return optuna.distributions.FloatDistribution(low, high, log=spec.log)
    return optuna.distributions.CategoricalDistribution(tuple(sorted({str(v) for v in values})))


def varied_params(points: pd.DataFrame, space: SearchSpace) -> list[str]:
    """The space's sampled parameters that took more than one value, then the loss setting when both ran."""
    names = [k for k in space.sampled_names() if f"param.{k}" in points and points[f"param.{k}"].nunique() > 1]
    if SETTING in points and points[SETTING].nunique() > 1:
        names.append(SETTING)
    return names


def optuna_study(points: pd.DataFrame, space: SearchSpace, direction: str = "maximize") -> optuna.Study | None:
    """An in-memory Optuna study with one complete trial per row of `points` (`value`, `param.<name>`,
    `loss_setting`), over the parameters that varied; None when nothing varied."""
    names = varied_params(points, space)
    if not names:
        return None
    column = {n: SETTING if n == SETTING else f"param.{n}" for n in names}
    dists = {n: _distribution(space.params.get(n), points[column[n]].dropna()) for n in names}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction=direction)
    for _, row in points.iterrows():
        params = {n: (str(row[column[n]]) if isinstance(dists[n], optuna.distributions.CategoricalDistribution)
                      else row[column[n]]) for n in names if pd.notna(row[column[n]])}
        study.add_trial(optuna.trial.create_trial(params=params, distributions={n: dists[n] for n in params},
                                                  value=float(row["value"])))
    return study


def param_importances(study: optuna.Study | None) -> dict[str, float]:
    """{param: fANOVA importance} (Optuna's evaluator, seeded); empty with fewer than 3 trials or no spread."""
    if study is None or len(study.trials) < 3 or len({t.value for t in study.trials}) < 2:
        return {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna's ExperimentalWarning
            return optuna.importance.get_param_importances(
                study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
    except RuntimeError:  # fANOVA's "zero total variance in all trees"
        return {}
