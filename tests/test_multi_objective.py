"""A two-objective search end to end: real Ray Tune, Optuna and MLflow on a tiny model (no mocks)."""
import json

import numpy as np
import optuna
import pytest
from scipy import stats

from analysis.load import load_study
from analysis.plots import pareto_figure
from analysis.report import build_report
from study.config import load_study_config
from study.ranking import rank_trials
from study.records import list_studies
from study.runner import run_study
from study.search import OPTUNA_FILE

pytestmark = pytest.mark.integration

TINY_TRIAL = {"epochs": 3, "dataset": {"name": "synthetic", "size": "tiny", "n_train": 256, "n_val": 48, "n_test": 48},
              "model": {"feature_dim": 8}, "optim": {"batch_size": 32}}
OBJECTIVES = [{"name": "val_acc", "mode": "max"}, {"name": "val_gap", "mode": "min"}]


def test_a_two_objective_search_is_one_optuna_study_with_two_directions_and_a_pareto_report(tmp_path, ray_local):
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    cfg = load_study_config(None, raw={
        "name": "mo", "trial": TINY_TRIAL, "storage_path": str(tmp_path / "runs"),
        "tracking_uri": f"sqlite:///{tmp_path}/mlflow.db", "search_space": "redreg", "metric": OBJECTIVES,
        "num_samples": 4, "max_concurrent": 2, "asha": {"grace_period": 1, "reduction_factor": 2},
        "baseline": {"seeds": [0, 1, 2]}, "confirm": {"top_k": 1, "seeds": [7, 8]}})
    outcome = run_study(cfg)
    assert not outcome.results.errors

    # Optuna searched both objectives: one study, two directions, two values per completed trial
    study = optuna.load_study(study_name="mo", storage=JournalStorage(JournalFileBackend(str(cfg.study_dir() / OPTUNA_FILE))))
    assert study.directions == [optuna.study.StudyDirection.MAXIMIZE, optuna.study.StudyDirection.MINIMIZE]
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(complete) == 4 and all(len(t.values) == 2 for t in complete)
    frame = outcome.results.get_dataframe()
    assert {"val_gap", "best_val_gap"} <= set(frame.columns)  # the trainable reports the gap
    # Tune's values are what Optuna was told (ASHA and Tune use the first metric, Optuna both)
    by_params = {json.dumps(t.params, sort_keys=True): t.values for t in complete}
    assert sorted(map(tuple, by_params.values())) == sorted(
        (r["val_acc"], r["val_gap"]) for _, r in frame[frame["config/role"] == "search"].iterrows())

    # the one ranking rule chose the confirmation and the study's best
    trials = load_study(str(cfg.study_dir()))
    search = trials[trials["role"] == "search"]
    top = rank_trials(search, cfg.metric.names, cfg.metric.modes)
    confirm = trials[trials["role"] == "confirm"]
    assert len(confirm) == 1 and confirm["confirms"].item() == top["trial_id"].iloc[0]
    info = json.loads((cfg.study_dir() / "study.json").read_text())
    assert info["best"]["trial_id"] == top["trial_id"].iloc[0] and "best_val_gap" in info["best"]
    [listed] = list_studies(cfg.storage_path)  # `mmstudy list`: the primary metric and the same best
    assert (listed["metric"], listed["mode"], listed["best"]["trial_id"]) == ("val_acc", "max", info["best"]["trial_id"])

    # the report: the Pareto figure, with joint training at the mean of its seeds and 95 % CI bars
    result = build_report(str(cfg.study_dir()), str(tmp_path / "report"), log_to_mlflow=False, command="x")
    assert "pareto.png" in result["files"] and (tmp_path / "report" / "pareto.png").stat().st_size > 10_000
    assert "![pareto](pareto.png)" in (tmp_path / "report" / "report.md").read_text()
    fig = pareto_figure(trials, cfg.metric.names, cfg.metric.modes, "mo")
    [marker] = [c for c in fig.axes[0].containers if c.get_label().startswith("joint training")]
    base = trials[trials["role"] == "baseline"].iloc[0]
    acc = [base[f"best_val_acc/seed_{s}"] for s in (0, 1, 2)]
    gap = [base[f"best_val_gap/seed_{s}"] for s in (0, 1, 2)]
    x, y = marker.lines[0].get_data()
    assert (x[0], y[0]) == pytest.approx((100 * np.mean(acc), 100 * np.mean(gap)))
    x_bar, y_bar = (seg.get_segments()[0] for seg in marker.lines[2])
    for values, bar, axis in ((acc, x_bar, 0), (gap, y_bar, 1)):
        ci = stats.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=stats.sem(values))
        if np.std(values) > 0:
            assert sorted(p[axis] for p in bar) == pytest.approx(100 * np.array(ci))
