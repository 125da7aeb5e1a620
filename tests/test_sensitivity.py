"""Sensitivity from any study with every trial: the common fidelity of a search with ASHA-stopped trials, fANOVA
importance on those values, the pooled interval of a one-at-a-time grid, both loss settings in one figure, and
the figures of a small real study (Ray Tune + Optuna + ASHA + MLflow)."""
import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analysis.sensitivity import analyse, fidelities, common_fidelity, findings, grid_sweeps, sensitivity_table
from analysis.stats import pooled_intervals
from search_spaces import load_space

SPACE = {"balancer": "redreg", "params": {"gamma": {"low": 0.0, "high": 2.0}, "beta": {"low": 0.05, "high": 3.0, "log": True}}}


def test_asha_rungs_are_where_rays_scheduler_judges_trials():
    search = {"mode": "search", "scheduler": "asha"}
    assert fidelities(dict(search, asha={"grace_period": 2, "reduction_factor": 3}), 12) == [2, 6, 12]  # quickstart
    assert fidelities(dict(search, asha={"grace_period": 2, "reduction_factor": 2}), 10) == [2, 4, 8, 10]  # smoke
    # non-integer rungs are judged at the first epoch at or past them: 2, 3, 4.5 -> 5, 6.75 -> 7
    assert fidelities(dict(search, asha={"grace_period": 2, "reduction_factor": 1.5}), 10) == [2, 3, 5, 7, 10]
    assert fidelities(dict(search, scheduler="none"), 12) == [12]
    assert fidelities({"mode": "sensitivity"}, 12) == [12]
    assert fidelities({}, 12) == [2, 6, 12]  # the study config's defaults: search, ASHA, grace 2, factor 3


def _history(values: dict[str, list[float]]) -> pd.DataFrame:
    """Long per-epoch history (as analysis.load.load_histories returns it) of `best_val_acc`, epochs from 1."""
    return pd.DataFrame([{"trial_id": t, "epoch": e + 1, "best_val_acc": v}
                         for t, vs in values.items() for e, v in enumerate(vs)])


def test_common_fidelity_is_the_largest_rung_every_compared_trial_reached():
    trials = pd.DataFrame({
        "trial_id": ["a", "b", "c", "d", "e", "f"],
        "status": ["finished", "finished", "pruned", "pruned", "diverged", "running"],
        "epochs_run": [6, 6, 4, 2, 3, 1], "best_val_acc": [0.90, 0.85, 0.70, 0.60, 0.5, 0.3]})
    history = _history({"a": [0.3, 0.50, 0.6, 0.80, 0.85, 0.90], "b": [0.4, 0.55, 0.6, 0.75, 0.80, 0.85],
                        "c": [0.2, 0.45, 0.6, 0.70], "d": [0.3, 0.60], "e": [0.1, 0.2, math.nan], "f": [0.3]})
    fid = common_fidelity(trials, history, "best_val_acc", rungs=[2, 4], budget=6)
    assert fid.epoch == 2  # d stopped at the first rung; e (diverged) and f (running) are not compared
    assert fid.values.to_dict() == {"a": 0.50, "b": 0.55, "c": 0.45, "d": 0.60}
    assert fid.full.to_dict() == {"a": 0.90, "b": 0.85}  # the finished trials' full-budget values
    assert fid.reached == {2: 4, 4: 3, 6: 2} and fid.left_out == []
    assert "epoch 2 of 6" in fid.text()
    # without d, every compared trial reached the second rung
    fid = common_fidelity(trials[trials["trial_id"] != "d"], history, "best_val_acc", [2, 4], 6)
    assert fid.epoch == 4 and fid.values.to_dict() == {"a": 0.80, "b": 0.75, "c": 0.70}
    # a forced epoch leaves out the trials that did not reach it
    fid = common_fidelity(trials, history, "best_val_acc", [2, 4], 6, epoch=4)
    assert fid.epoch == 4 and fid.left_out == ["d"] and set(fid.values.index) == {"a", "b", "c"}
    # every compared trial finished: the full budget, from the trials' own final values (no history needed)
    fid = common_fidelity(trials[trials["status"] == "finished"], None, "best_val_acc", [2, 4], 6)
    assert fid.epoch == 6 and fid.values.to_dict() == {"a": 0.90, "b": 0.85}
    assert "full budget" in fid.text()
    # a trial stopped between rungs (a crash) counts at the rung below what it reached
    crashed = trials.assign(status=["finished", "finished", "pruned", "finished", "failed", "failed"])
    fid = common_fidelity(crashed, _history({"a": [0.3, 0.5, 0.6, 0.8, 0.85, 0.9], "b": [0.4, 0.55, 0.6, 0.75, 0.8, 0.85],
                                             "c": [0.2, 0.45, 0.6], "d": [0.3, 0.6, 0.6, 0.6, 0.6, 0.6]}),
                          "best_val_acc", [2, 4], 6)
    assert fid.epoch == 2


def _search_trials(settings=("multimodal",), n_stopped=7, n_finished=3, seed=0):
    """A search as analysis.load.load_study returns it: ASHA stopped most trials at epoch 2 (of 6); the value at
    epoch 2 rises with gamma (+10 points over its range), beta is noise; one joint-training baseline per setting."""
    rng = np.random.default_rng(seed)
    rows, hist = [], {}
    n = n_stopped + n_finished
    for i in range(n):
        gamma, beta = float(rng.uniform(0, 2)), float(np.exp(rng.uniform(np.log(0.05), np.log(3.0))))
        setting = settings[i % len(settings)]
        at2 = 0.60 + 0.05 * gamma + (0.05 if setting == "multimodal+unimodal" else 0) + rng.normal(0, 0.005)
        done = i >= n_stopped
        curve = [at2 - 0.1, at2] + ([at2 + 0.05, at2 + 0.1, at2 + 0.2, at2 + 0.25] if done else [])
        hist[f"t{i}"] = curve
        rows.append({"trial_id": f"t{i}", "role": "search", "status": "finished" if done else "pruned",
                     "loss_setting": setting, "num_seeds": 1, "epochs_run": len(curve), "param.epochs": 6,
                     "param.balancer.gamma": gamma, "param.balancer.beta": beta, "best_val_acc": curve[-1]})
    for j, setting in enumerate(settings):
        seeds = [0.55 + 0.05 * j, 0.57 + 0.05 * j, 0.59 + 0.05 * j]
        rows.append({"trial_id": f"base{j}", "role": "baseline", "status": "finished", "loss_setting": setting,
                     "num_seeds": 3, "epochs_run": 6, "param.epochs": 6, "best_val_acc": 0.8,
                     **{f"best_val_acc/seed_{s}": 0.8 + 0.01 * s for s in range(3)}})
        hist[f"base{j}"] = [0.4, float(np.mean(seeds)), 0.7, 0.75, 0.78, 0.8]
    frame = pd.DataFrame(rows)
    history = _history(hist)
    std = {f"base{j}": float(np.std([0.55 + 0.05 * j, 0.57 + 0.05 * j, 0.59 + 0.05 * j], ddof=1)) for j in range(len(settings))}
    history["best_val_acc_std"] = history["trial_id"].map(std).where(history["epoch"] == 2)
    return frame, history


CONFIG = {"mode": "search", "scheduler": "asha", "asha": {"grace_period": 2, "reduction_factor": 2}}


def test_importance_and_partial_dependence_count_the_stopped_trials():
    trials, history = _search_trials()
    calls = []

    def load(frame, metrics):
        calls.append((sorted(frame["trial_id"]), metrics))
        return history[history["trial_id"].isin(frame["trial_id"])][["trial_id", "epoch", *metrics]]

    sens = analyse(trials, CONFIG, load_space(SPACE), "val_acc", "max", history=load)
    assert sens.kind == "search" and sens.fidelity.epoch == 2 and len(sens.points) == 10
    assert calls == [(sorted(trials["trial_id"]), ["best_val_acc", "best_val_acc_std"])]  # trials + baseline, once
    assert (sens.points["status"] == "pruned").sum() == 7 and len(sens.study.trials) == 10
    assert sens.points["full"].notna().sum() == 3
    # fANOVA on the common-fidelity values: gamma carries the signal, beta is noise
    assert sens.importances["balancer.gamma"] > 0.8 > sens.importances["balancer.beta"]
    # the surrogate's partial dependence follows the +5 points per unit of gamma, beyond noise; beta's is flat
    gamma = next(c for c in sens.curves if c.param == "balancer.gamma")
    assert gamma.beyond_noise and gamma.x_best > gamma.x_worst
    slope = (gamma.frame["mean"].iloc[-1] - gamma.frame["mean"].iloc[0]) / (gamma.frame["x"].iloc[-1] - gamma.frame["x"].iloc[0])
    assert slope == pytest.approx(0.05, abs=0.015)
    beta = next(c for c in sens.curves if c.param == "balancer.beta")
    assert not beta.beyond_noise and beta.spread < gamma.spread / 3
    assert (gamma.frame["low"] <= gamma.frame["mean"]).all() and (gamma.frame["mean"] <= gamma.frame["high"]).all()
    # joint training at the same epoch: its per-epoch mean and std over 3 seeds, t-interval with 2 df
    base = sens.baselines["multimodal"]
    expected = stats.t.interval(0.95, 2, loc=0.57, scale=0.02 / math.sqrt(3))
    assert base.n == 3 and base.mean == pytest.approx(0.57) and (base.ci_low, base.ci_high) == pytest.approx(expected)
    assert sens.baselines_full["multimodal"].mean == pytest.approx(0.81)  # per-seed values at the full budget
    text = "\n".join(findings(sens))
    assert "epoch 2 of 6, the largest ASHA rung all 10 trials reached" in text and "the 7 trials ASHA stopped" in text
    assert "Beyond noise: gamma (MM)." in text
    table = sensitivity_table(sens)
    assert len(table) == 10 and set(table["epoch"]) == {2}


def test_partial_dependence_mean_is_sklearns():
    """The curve is sklearn.inspection.partial_dependence of the same surrogate (its band is from the GP's
    covariance, which sklearn's function does not give)."""
    from sklearn.inspection import partial_dependence

    from analysis.sensitivity import _Design, fit_surrogate

    trials, history = _search_trials()
    sens = analyse(trials, CONFIG, load_space(SPACE), history=lambda f, m: history)
    space = load_space(SPACE)
    design = _Design(sens.points, ["balancer.gamma", "balancer.beta"], {}, space)
    x = design.matrix(sens.points)
    model, _ = fit_surrogate(x, sens.points["value"].to_numpy(), sens.noise_floor)
    curve = next(c for c in sens.curves if c.param == "balancer.gamma")
    grid = design.scaled("balancer.gamma", curve.frame["x"].to_numpy())
    ref = partial_dependence(model, x, [0], custom_values={0: grid}, kind="average", method="brute")
    assert ref["average"][0] == pytest.approx(curve.frame["mean"].to_numpy(), abs=1e-9)


def test_pooled_interval_is_the_one_way_anova_residual_by_hand_and_clipped():
    groups = [[0.80, 0.84], [0.70, 0.74], [0.90, 0.98]]
    pooled = pooled_intervals(groups)
    # by hand: SS_within = 2 * 0.02² + 2 * 0.02² + 2 * 0.04² = 0.0048 on 3 * (2 - 1) = 3 df -> s = 0.04
    assert pooled.df == 3 and pooled.sd == pytest.approx(0.04)
    half = stats.t.ppf(0.975, 3) * 0.04 / math.sqrt(2)
    assert [b for s in pooled.summaries for b in (s.ci_low, s.ci_high)] == pytest.approx(
        [0.82 - half, 0.82 + half, 0.72 - half, 0.72 + half, 0.94 - half, 0.94 + half])
    assert pooled.summaries[2].std == pytest.approx(np.std([0.90, 0.98], ddof=1))  # each point keeps its own std
    # scipy's one-way ANOVA: F = MS_between / MS_within, MS_within being the pooled variance
    means, grand = np.array([0.82, 0.72, 0.94]), np.mean(np.concatenate(groups))
    ms_between = 2 * np.sum((means - grand) ** 2) / 2
    assert stats.f_oneway(*groups).statistic == pytest.approx(ms_between / pooled.sd ** 2)
    # never outside [0, 1]: 0.94 + 0.09 passes 1
    assert pooled.summaries[2].ci_high > 1
    clipped = pooled_intervals(groups, bounds=(0.0, 1.0))
    assert clipped.summaries[2].ci_high == 1.0 and clipped.summaries[2].ci_low == pytest.approx(0.94 - half)
    assert pooled_intervals([[0.5], [0.6]]).sd is None  # one seed per point: no pooled spread, no interval


def _grid_trials():
    """A one-at-a-time grid as load_study returns it: gamma at 3 values x 2 loss settings x 2 seeds, baselines."""
    rows = []
    values = {("multimodal", 0.0): [0.80, 0.82], ("multimodal", 1.0): [0.70, 0.72], ("multimodal", 2.0): [0.90, 0.98],
              ("multimodal+unimodal", 0.0): [0.85, 0.86], ("multimodal+unimodal", 1.0): [0.86, 0.87],
              ("multimodal+unimodal", 2.0): [0.85, 0.87]}
    for i, ((setting, x), accs) in enumerate(values.items()):
        rows.append({"trial_id": f"g{i}", "role": "sensitivity", "status": "finished", "loss_setting": setting,
                     "sweep_param": "balancer.gamma", "sweep_value": x, "num_seeds": 2, "param.balancer.gamma": x,
                     **{f"best_test_acc/seed_{s}": a for s, a in enumerate(accs)}})
    for j, setting in enumerate(["multimodal", "multimodal+unimodal"]):
        rows.append({"trial_id": f"b{j}", "role": "baseline", "status": "finished", "loss_setting": setting,
                     "sweep_param": None, "num_seeds": 3, **{f"best_test_acc/seed_{s}": 0.8 + 0.05 * j + 0.01 * s
                                                             for s in range(3)}})
    return pd.DataFrame(rows)


def test_grid_sweeps_pool_each_sweep_and_test_it_with_anova():
    sweeps = {s.setting: s for s in grid_sweeps(_grid_trials())}
    mm = sweeps["multimodal"]
    # pooled: (4 * 0.01² + 2 * 0.04²) / 3 df
    assert mm.df == 3 and mm.sd == pytest.approx(math.sqrt(0.0012)) and list(mm.frame["x"]) == [0.0, 1.0, 2.0]
    assert mm.frame["high"].max() == 1.0  # 0.94 + 0.078, clipped
    res = stats.f_oneway([0.80, 0.82], [0.70, 0.72], [0.90, 0.98])
    assert (mm.f, mm.p) == pytest.approx((res.statistic, res.pvalue))
    # the per-point t-interval (1 df) stays available, clipped too
    assert mm.frame["point_high"].iloc[2] == 1.0
    assert mm.frame["point_low"].iloc[0] == pytest.approx(stats.t.interval(0.95, 1, loc=0.81, scale=0.01)[0])
    other = stats.f_oneway([0.85, 0.86], [0.86, 0.87], [0.85, 0.87]).pvalue
    assert res.pvalue < other  # Holm over the 2 sweeps: the smaller p times 2, the larger at least that
    assert mm.p_holm == pytest.approx(2 * res.pvalue)
    assert sweeps["multimodal+unimodal"].p_holm == pytest.approx(max(2 * res.pvalue, other))
    assert mm.beyond_noise and not sweeps["multimodal+unimodal"].beyond_noise


def _colours(ax):
    from matplotlib.colors import to_hex

    return {to_hex(line.get_color()) for line in ax.get_lines()}


def test_both_loss_settings_drawn_in_one_figure_with_their_own_baselines(tmp_path):
    from matplotlib.colors import to_hex

    from analysis.plots import sensitivity_figure

    space = load_space(SPACE)
    grid = analyse(_grid_trials(), {"mode": "sensitivity"}, space)
    assert grid.kind == "grid" and grid.settings == ["multimodal", "multimodal+unimodal"]
    fig = sensitivity_figure(grid, space, "grid")
    ax = fig.axes[0]
    blue, red = to_hex("tab:blue"), to_hex("tab:red")
    assert {blue, red} <= _colours(ax)
    baseline_means = sorted(line.get_ydata()[0] for line in ax.get_lines() if line.get_linestyle() == "--")
    assert baseline_means == pytest.approx([81.0, 86.0])  # each setting's own joint training
    labels = ax.get_legend_handles_labels()[1]
    assert "multimodal loss (pooled df 3)" in labels and "multimodal + unimodal loss (*) (pooled df 3)" in labels
    assert "pooled within-point seed variance" in fig._suptitle.get_text()
    # every drawn interval is inside [0, 100] points
    for patch in ax.collections:
        ys = np.concatenate([p.vertices[:, 1] for p in patch.get_paths()]) if patch.get_paths() else np.array([])
        assert ys.size == 0 or (ys.min() >= 0 and ys.max() <= 100)
    fig.savefig(tmp_path / "grid.png")
    per_point = analyse(_grid_trials(), {"mode": "sensitivity"}, space, interval="per_point")
    assert "per-point t" in " ".join(sensitivity_figure(per_point, space, "grid").axes[0].get_legend_handles_labels()[1])
    # a search of both settings: one colour each in every panel, a lower panel at the full budget
    trials, history = _search_trials(settings=("multimodal", "multimodal+unimodal"), n_stopped=10, n_finished=4)
    sens = analyse(trials, CONFIG, space, history=lambda f, m: history)
    assert sens.settings == ["multimodal", "multimodal+unimodal"]
    assert {c.setting for c in sens.curves} == {"multimodal", "multimodal+unimodal"}
    fig = sensitivity_figure(sens, space, "search")
    top, bottom = fig.axes[0], fig.axes[1]
    assert {blue, red} <= _colours(top) and {blue, red} <= _colours(bottom)
    assert "at epoch 2 of 6" in fig._suptitle.get_text() and top.get_ylabel() == "best_val_acc (%) at epoch 2"
    assert bottom.get_ylabel() == "at epoch 6"
    text = "\n".join(findings(sens))
    assert "MM: moves" in text and "MM+UM*: moves" in text


@pytest.fixture(scope="module")
def asha_study(tmp_path_factory, ray_local):
    """A real search, Optuna TPE + ASHA on the tiny benchmark: joint training's learning rate and momentum over
    8 trials of up to 3 epochs (ASHA rungs at epochs 1 and 2; these trials learn from the first epoch unless
    their learning rate is tiny, so their values differ there and ASHA stops some), a 3-seed joint-training
    baseline."""
    from study.config import load_study_config
    from study.runner import run_study

    tmp = tmp_path_factory.mktemp("sens")
    trial = {"epochs": 3, "dataset": {"name": "synthetic", "size": "tiny", "n_train": 384, "n_val": 96, "n_test": 96},
             "model": {"feature_dim": 16}, "optim": {"batch_size": 32}, "balancer": {"name": "none"}}
    raw = {"name": "asha", "trial": trial, "storage_path": str(tmp / "runs"), "tracking_uri": f"sqlite:///{tmp}/mlflow.db",
           "search_space": {"params": {"optim.lr": {"low": 1e-4, "high": 0.3, "log": True},
                                       "optim.momentum": {"low": 0.0, "high": 0.95}}},
           "num_samples": 8, "scheduler": "asha", "asha": {"grace_period": 1, "reduction_factor": 2},
           "seeds": [0], "baseline": {"enabled": True, "seeds": [0, 1, 2]}, "confirm": {"top_k": 0},
           "metric": {"name": "val_acc", "mode": "max"}}
    cfg = load_study_config(None, raw=raw)
    run_study(cfg, verbose=0)
    return cfg


def test_report_of_a_real_asha_search_uses_every_trial(asha_study, tmp_path):
    from mlflow.tracking import MlflowClient

    from analysis import load_study
    from analysis.report import build_report
    from test_report import assert_real_png

    trials = load_study(str(asha_study.study_dir()))
    config = trials.attrs["config"]
    own = trials[trials["role"] == "search"]
    rungs = fidelities(config, 3)
    assert rungs == [1, 2, 3]
    stopped = own.loc[own["status"] == "pruned", "epochs_run"]
    assert len(stopped) and set(stopped) <= {1, 2}  # ASHA stopped some, at these rungs
    result = build_report(str(asha_study.study_dir()), str(tmp_path / "out"), command="x", log_to_mlflow=False)
    out = tmp_path / "out"
    for name in ("sensitivity.png", "slice.png", "importance.png"):
        assert name in result["files"]
        assert_real_png(out / name)
    contours = [f for f in result["files"] if f.startswith("contour_")]
    assert contours in (["contour_optim_lr_optim_momentum.png"], ["contour_optim_momentum_optim_lr.png"])
    assert_real_png(out / contours[0])
    table = pd.read_csv(out / "sensitivity.csv")
    ended = own[own["status"].isin(["finished", "pruned"])]
    expected_epoch = max(r for r in rungs if r <= min(ended["epochs_run"].where(ended["status"] == "pruned", 3)))
    assert len(table) == len(ended) and set(table["epoch"]) == {expected_epoch}
    # each value is the trial's MLflow history of best_val_acc at that epoch, stopped trials included
    client = MlflowClient(asha_study.resolved_tracking_uri())
    for _, row in ended.iterrows():
        at = {int(m.step): m.value for m in client.get_metric_history(row["run_id"], "best_val_acc")}
        assert table.loc[table["trial_id"] == row["trial_id"], "value"].item() == pytest.approx(at[expected_epoch])
    md = (out / "report.md").read_text()
    section = md[md.index("## Sensitivity"):md.index("## Comparison")]
    assert f"{len(ended)} trials compared at" in section and "![slice](slice.png)" in section
    assert "fANOVA importance" in section and "Joint training" in section
    assert json.loads(json.dumps(result["counts"]))["finished"] >= 2


def test_contour_pairs_are_the_two_most_important_and_each_constrained_pair():
    """RedReg: gamma x R when they are the most important, and tau_min x tau_max, tied by `tau_min < tau_max`."""
    from analysis.plots import contour_pairs
    from analysis.sensitivity import Sensitivity

    space = load_space("redreg")
    params = [f"balancer.{p}" for p in ("gamma", "beta", "R", "tau_min", "tau_max")]
    sens = Sensitivity("search", "best_val_acc", 100.0, (0.0, 1.0), ["multimodal"], params, {}, study=object(),
                       importances={"balancer.gamma": 0.5, "loss_setting": 0.3, "balancer.R": 0.1, "balancer.tau_max": 0.05,
                                    "balancer.beta": 0.03, "balancer.tau_min": 0.02})
    assert contour_pairs(sens, space) == [("balancer.gamma", "balancer.R"), ("balancer.tau_min", "balancer.tau_max")]
    sens.importances = {"balancer.tau_max": 0.6, "balancer.tau_min": 0.3, "balancer.gamma": 0.1}
    assert contour_pairs(sens, space) == [("balancer.tau_max", "balancer.tau_min")]  # the same pair once
