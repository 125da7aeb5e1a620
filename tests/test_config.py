import pytest

from trainables.config import build_trial_config, parse_overrides
from trainables.errors import ConfigError


def test_overrides_are_typed_and_nested():
    assert parse_overrides(["optim.lr=0.01", "model.fusion=film", "epochs=3", "x.flag=true"]) == {
        "optim": {"lr": 0.01}, "model": {"fusion": "film"}, "epochs": 3, "x": {"flag": True}}


def test_defaults_resolve_every_plugin_param():
    cfg = build_trial_config({}, ["balancer.name=redreg"])
    params = cfg.to_dict()["balancer"]
    assert params["gamma"] == 0.5 and params["beta"] == 0.9 and params["R"] == 0.15
    assert params["tau_min"] == 0.2 and params["tau_max"] == 0.5
    assert cfg.to_dict()["dataset"]["size"] == "tiny"


def test_code_variant_switches_defaults_but_explicit_values_win():
    cfg = build_trial_config({"balancer": {"name": "redreg", "variant": "code", "beta_mode": "fixed"}})
    p = cfg.to_dict()["balancer"]
    assert p["gamma"] == 0.6 and p["anchor"] == "epoch_copy" and p["rs_normalise"] == "ema"
    assert p["beta_mode"] == "fixed"


@pytest.mark.parametrize("overrides, expected", [
    (["model.fusoin=film"], "model.fusoin: unknown key; did you mean 'model.fusion'?"),
    (["model.fusion=transformer"], "model.fusion: Input should be 'concat', 'sum', 'film', 'gated' or 'late'"),
    (["balancer.name=redregg"], "balancer.name: unknown balancer 'redregg'; allowed: agm, arl, bmm, cal, gblend, inforeg"),
    (["dataset.name=imagenet"], "dataset.name: unknown dataset 'imagenet'; allowed: cmu_mosi, crema_d, kinetics_sounds, synthetic"),
    (["optim.lr=fast"], "optim.lr: Input should be a valid number"),
    (["optim.lr=-1"], "optim.lr: Input should be greater than 0"),
    (["balancer.name=redreg", "balancer.tau_min=0.6"], "balancer: tau_min (0.6) must be < tau_max (0.5)"),
    (["balancer.name=redreg", "balancer.gama=1"], "balancer.gama: unknown key; did you mean 'balancer.gamma'?"),
    (["balancer.name=redreg", "balancer.gamma=-1"], "balancer.gamma: Input should be greater than or equal to 0"),
    (["model.unimodal_head=fused_block", "model.fusion=film"], "model.unimodal_head: 'fused_block' needs"),
    (["epochs"], "override 'epochs': expected key=value"),
])
def test_bad_input_is_one_line_naming_the_field(overrides, expected):
    with pytest.raises(ConfigError) as err:
        build_trial_config({}, overrides)
    message = str(err.value)
    assert expected in message, message
    assert "\n" not in message


# ----------------------------------------------------------------------------- the study config and its layer

STUDY_TRIAL = {"epochs": 2, "dataset": {"name": "synthetic", "size": "tiny"}, "model": {"feature_dim": 8}}


def _study(tmp_path=None, **extra):
    from study.config import load_study_config

    raw = {"name": "unit", "trial": STUDY_TRIAL, "search_space": "redreg"}
    if tmp_path is not None:
        raw.update(storage_path=str(tmp_path / "runs"), tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    raw.update(extra)
    return load_study_config(None, raw=raw)


@pytest.mark.parametrize("overrides, expected", [
    ({"confirm": {"seeds": [0, 7]}}, "confirm.seeds: must be seeds the search never saw"),
    ({"baseline": {"seeds": [1, 2]}}, "baseline.seeds: List should have at least 3 items"),
    ({"resources": {"gpu": 1.5}}, "resources.gpu: fractions must be below 1"),
    ({"loss_settings": ["multimodal", "multimodal"]}, "loss_settings: loss_settings must be a list without repeats"),
    ({"trial": {"model": {"fusoin": "film"}}}, "trial.model.fusoin: unknown key"),
    ({"mode": "compare", "variants": {}}, "variants: compare mode needs at least one named variant"),
    ({"trial": {**STUDY_TRIAL, "loss_setting": "multimodal+unimodal"}, "loss_settings": ["multimodal"]},
     "trial.loss_setting: 'multimodal+unimodal' is not in the study's loss_settings"),
])
def test_bad_study_fields_are_one_line_naming_the_field(overrides, expected):
    with pytest.raises(ConfigError) as err:
        _study(**overrides)
    assert expected in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_a_trial_loss_setting_is_the_study_loss_setting_not_silently_replaced():
    study = _study(trial={**STUDY_TRIAL, "loss_setting": "multimodal+unimodal"})
    assert study.loss_settings == ["multimodal+unimodal"]
    assert study.trial_config().loss_setting == "multimodal+unimodal"


def test_baseline_and_confirmation_defaults_follow_the_mode():
    search = _study(seeds=[0, 1])
    assert search.has_baseline() and search.confirming() and search.baseline_seeds() == search.confirm.seeds
    sens = _study(mode="sensitivity", sensitivity={"params": ["gamma"]})
    assert sens.has_baseline() and not sens.confirming() and sens.baseline_seeds() == [0, 1, 2]
    compare = _study(mode="compare", variants={"none": {"balancer": {"name": "none"}}}, search_space=None)
    assert not compare.has_baseline() and not compare.confirming()
    assert _study(baseline={"enabled": False}).has_baseline() is False
    assert _study().checkpoint_policy() == "none" and _study(log_checkpoint="best").checkpoint_policy() == "best"


def test_the_snapshot_inlines_the_search_space_and_rebuilds_the_same_study(tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("balancer: redreg\nparams:\n  gamma: {low: 0.0, high: 2.0, grid: [0.0, 1.0]}\n")
    cfg = _study(tmp_path, search_space=str(space))
    snapshot = cfg.snapshot()
    assert snapshot["search_space"]["params"]["balancer.gamma"]["high"] == 2.0
    assert snapshot["tracking_uri"] == f"sqlite:///{tmp_path}/mlflow.db" and snapshot["experiment_name"] == "mmstudy/unit"
    space.write_text("balancer: redreg\nparams:\n  gamma: {low: 0.0, high: 9.0}\n")  # edited after the study
    from study.config import load_study_config

    again = load_study_config(None, raw=snapshot)
    assert again.space() == cfg.space() and again.config_hash() == cfg.config_hash()


def test_ranking_honours_the_metric_and_its_mode():
    """`mode: min` on a loss metric picks the lowest loss (it used to take the lowest accuracy), and only the
    study's own trials are ranked (not its baseline or confirmations)."""
    import pandas as pd

    from study.commands import top_trials_table
    from study.records import best_of, rank

    frame = pd.DataFrame({
        "trial_id": ["a", "b", "c", "base", "conf"], "config/role": ["search"] * 3 + ["baseline", "confirm"],
        "train_loss": [0.9, 0.2, float("nan"), 0.01, 0.05], "best_val_acc": [0.8, 0.3, 0.99, 0.9, 0.9],
        "best_test_acc": [0.7, 0.2, 0.9, 0.9, 0.9], "config/point/balancer.gamma": [0.1, 0.2, 0.3, None, 0.2]})
    assert best_of(frame, "train_loss", "min")["trial_id"] == "b"
    assert best_of(frame, "train_loss", "max")["trial_id"] == "a"
    assert list(rank(frame, "best_val_acc", "max")["trial_id"]) == ["c", "a", "b"]
    table = top_trials_table(frame, "train_loss", "min").splitlines()
    assert table[1].split()[0] == "b" and table[2].split()[0] == "a" and len(table) == 3


def test_the_searcher_plans_baseline_then_search_then_confirms_the_top_k_once(tmp_path):
    """Baseline first, Optuna's samples next, nothing while a search trial runs, then the top-k by the
    study's metric and mode (min here) with the confirmation seeds; a restored state repeats nothing."""
    from ray.tune.search import Searcher

    from study.search import StudySearcher

    cfg = _study(tmp_path, num_samples=3, seeds=[0], metric={"name": "train_loss", "mode": "min"},
                 confirm={"top_k": 2, "seeds": [5, 6]}, baseline={"seeds": [0, 1, 2]})
    cfg.study_dir().mkdir(parents=True)
    searcher = StudySearcher.for_study(cfg, cfg.study_dir())
    assert searcher.total() == 1 + 3 + 2
    first = searcher.suggest("t0")
    assert first["role"] == "baseline" and first["point"]["balancer.name"] == "none" and first["seeds"] == [0, 1, 2]
    search = [searcher.suggest(f"t{i}") for i in (1, 2, 3)]
    assert [s["role"] for s in search] == ["search"] * 3 and all("balancer.gamma" in s["point"] for s in search)
    searcher.on_trial_complete("t0", {"train_loss": 0.0, "training_iteration": 2})
    searcher.on_trial_complete("t1", {"train_loss": 0.5, "training_iteration": 2})
    searcher.on_trial_complete("t2", {"train_loss": 0.1, "training_iteration": 2})
    assert searcher.suggest("t4") is None  # t3 still runs
    searcher.save(str(tmp_path / "state.pkl"))
    searcher.on_trial_complete("t3", {"train_loss": 0.3, "training_iteration": 2})
    confirms = [searcher.suggest("t4"), searcher.suggest("t5")]
    assert [(c["role"], c["confirms"], c["seeds"]) for c in confirms] == [("confirm", "t2", [5, 6]),
                                                                           ("confirm", "t3", [5, 6])]
    assert confirms[0]["point"] == search[1]["point"] and searcher.suggest("t6") == Searcher.FINISHED
    restored = StudySearcher.for_study(cfg, cfg.study_dir())
    restored.restore(str(tmp_path / "state.pkl"))  # the state before t3 ended: no baseline, no search again
    restored.on_trial_complete("t3", {"train_loss": 0.3, "training_iteration": 2})
    assert [restored.suggest("x")["confirms"], restored.suggest("y")["confirms"]] == ["t2", "t3"]
    assert restored.suggest("z") == Searcher.FINISHED


def test_a_variant_named_with_parentheses_survives_report_from_the_experiment_name(tmp_path):
    """`report <experiment>` reads the parent run's snapshot (it used to rebuild the config from MLflow params,
    where 'cal (reading)' became 'cal _reading_'), and a study that fails while starting leaves nothing."""
    from analysis.load import resolve_study
    from study import records

    cfg = _study(tmp_path, mode="compare", search_space=None,
                 variants={"none": {"balancer": {"name": "none"}}, "cal (reading)": {"balancer": {"name": "cal"}}})
    study = records.start(cfg)
    ref = resolve_study("mmstudy/unit", tracking_uri=cfg.resolved_tracking_uri())
    assert list(ref.config["variants"]) == ["none", "cal (reading)"] and ref.config == study.info["config"]
    assert ref.parent_run_id == study.info["parent_run_id"]
    with pytest.raises(ConfigError):
        records.check_new(cfg)  # the name is taken
    # `mmstudy ui` on a tracking server (prints the runs-table link, starts nothing; the server must answer):
    # tests/test_faults.py::test_mlflow_going_away_mid_study_loses_nothing, against a real server


def test_every_reconboost_search_point_gives_every_modality_a_turn_at_the_shipped_trial_lengths():
    """ReconBoost's schedule (the balancer's own phase/turn): each sampled epochs_per_stage, with the default
    correct_epochs, reaches the second modality's turn within every shipped study's trial length."""
    from pathlib import Path

    import yaml

    from search_spaces import load_space
    from trainables.balancers.reconboost import ReconBoost, ReconBoostParams

    spec = load_space("reconboost").params["balancer.epochs_per_stage"]
    lengths = {yaml.safe_load(p.read_text())["trial"]["epochs"]
               for p in (Path(__file__).parent.parent / "study" / "configs").glob("*.yaml")}
    assert lengths and spec.grid and max(spec.grid) <= spec.high
    for epochs in sorted(lengths):
        for per_stage in range(int(spec.low), int(spec.high) + 1):
            rb = ReconBoost(ReconBoostParams(epochs_per_stage=per_stage), ["audio", "visual"])
            turns = {rb.turn(rb.phase(e)[0]) for e in range(epochs) if rb.phase(e)[1]}
            assert turns == {"audio", "visual"}, (epochs, per_stage)
