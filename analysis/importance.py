"""Hyperparameter importance with Optuna's own evaluator (fANOVA), over a study's finished trials."""
from __future__ import annotations

import optuna
import pandas as pd

from search_spaces import SearchSpace


def _distribution(spec, values: pd.Series):
    if spec is not None and spec.type == "float":
        return optuna.distributions.FloatDistribution(spec.low, spec.high, log=spec.log)
    if spec is not None and spec.type == "int":
        return optuna.distributions.IntDistribution(int(spec.low), int(spec.high), log=spec.log)
    choices = tuple(sorted({str(v) for v in values}))
    return optuna.distributions.CategoricalDistribution(choices)


def param_importances(trials: pd.DataFrame, space: SearchSpace, target: str = "best_val_acc",
                      direction: str = "maximize") -> dict[str, float]:
    """{param: importance} for `target` (the study's metric at each trial's selected epoch: importance on
    the split the search selected on, not on test); empty when fewer than 3 finished trials or nothing varied."""
    done = trials[(trials["status"] == "finished") & trials[target].notna()]
    names = [k for k in space.sampled_names() if f"param.{k}" in done and done[f"param.{k}"].nunique() > 1]
    if "param.loss_setting" in done and done["param.loss_setting"].nunique() > 1:
        names.append("loss_setting")
    if len(done) < 3 or not names:
        return {}
    dists = {n: _distribution(space.params.get(n), done[f"param.{n}"]) for n in names}
    study = optuna.create_study(direction=direction)
    for _, row in done.iterrows():
        params = {n: (str(row[f"param.{n}"]) if isinstance(dists[n], optuna.distributions.CategoricalDistribution)
                      else row[f"param.{n}"]) for n in names}
        study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=float(row[target])))
    if done[target].nunique() < 2:
        return {}  # every finished trial scored the same: nothing to attribute
    try:
        return optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
    except RuntimeError:  # fANOVA's "zero total variance in all trees"
        return {}
