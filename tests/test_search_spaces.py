import optuna
import pytest

from search_spaces import (available_spaces, define_by_run, grid_points, load_space, sensitivity_points,
                           validate_space)
from trainables.config import build_trial_config
from trainables.errors import ConfigError

BASE = {"balancer": {"name": "redreg"}}


@pytest.mark.parametrize("name", available_spaces())
def test_every_shipped_space_is_valid_for_its_balancer(name):
    space = load_space(name)
    base = {"balancer": {"name": space.balancer}} if space.balancer else {}
    validate_space(space, base)
    for key, p in space.params.items():
        # the papers' Fig. 4/5 sweeps have six values; an integer range with fewer values sweeps all of them
        every_int = list(range(int(p.low), int(p.high) + 1)) if p.type == "int" and p.low is not None else None
        assert p.grid is None or len(p.grid) == 6 or p.grid == every_int, \
            f"{name}.{key}: sensitivity grids have six values (or every value of a shorter integer range)"


@pytest.mark.parametrize("sampler", [optuna.samplers.TPESampler(seed=0), optuna.samplers.RandomSampler(seed=1)])
def test_tau_constraint_is_never_violated_while_sampling(sampler):
    define = define_by_run(load_space("redreg"), BASE)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    for _ in range(300):
        trial = study.ask()
        define(trial)
        tau_min, tau_max = trial.params["balancer.tau_min"], trial.params["balancer.tau_max"]
        assert 0 < tau_min < tau_max < 1
        # every sampled point is a valid trial config
        build_trial_config(BASE, {"balancer": {"tau_min": tau_min, "tau_max": tau_max}})
        study.tell(trial, tau_max - tau_min)


def test_an_impossible_constraint_is_rejected_before_any_trial():
    space = load_space({"params": {"tau_min": {"low": 0.6, "high": 0.9}, "tau_max": {"low": 0.2, "high": 0.5}},
                        "constraints": ["tau_min < tau_max"]})
    with pytest.raises(ConfigError, match="'balancer.tau_min < balancer.tau_max' cannot be met"):
        validate_space(space, BASE)


@pytest.mark.parametrize("spec, fragment", [
    ({"params": {"gamma": {"low": 1.0, "high": 0.5}}}, "empty range: low (1.0) must be < high (0.5)"),
    ({"params": {"gamma": {"low": 0.0, "high": 1.0, "log": True}}}, "log scale needs low > 0"),
    ({"params": {"gamma": {"type": "categorical", "choices": []}}}, "non-empty list of choices"),
    ({"params": {"gamma": {"low": 0, "high": 1}}, "constraints": ["gamma <= beta"]}, "expected 'a < b'"),
    ({"parms": {}}, "search_space.parms: unknown key; did you mean 'search_space.params'?"),
])
def test_malformed_spaces_are_one_line_errors(spec, fragment):
    with pytest.raises(ConfigError) as err:
        load_space(spec)
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_bounds_outside_the_fields_range_are_rejected():
    space = load_space({"params": {"gamma": {"low": -1.0, "high": 1.0}}})
    with pytest.raises(ConfigError, match=r"search_space.params.balancer.gamma: value -1.0 is invalid"):
        validate_space(space, BASE)


def test_sensitivity_grid_is_one_at_a_time_for_each_loss_setting():
    space = load_space("redreg")
    points = sensitivity_points(space, BASE, ["gamma", "beta", "R"], ["multimodal", "multimodal+unimodal"])
    assert len(points) == 3 * 6 * 2
    for pt in points:
        swept = [k for k in pt if k.startswith("balancer.")]
        assert swept == [pt["sweep_param"]] and pt[pt["sweep_param"]] == pt["sweep_value"]
    gammas = sorted({pt["sweep_value"] for pt in points if pt["sweep_param"] == "balancer.gamma"})
    assert gammas == [0.0, 0.25, 0.5, 0.75, 1.0, 1.5]
    assert {pt["loss_setting"] for pt in points} == {"multimodal", "multimodal+unimodal"}


def test_sensitivity_rejects_grid_values_that_break_constraints_at_the_defaults():
    space = load_space({"params": {"tau_min": {"low": 0.05, "high": 0.9, "grid": [0.1, 0.6]}},
                        "constraints": ["tau_min < tau_max"]})
    with pytest.raises(ConfigError, match="grid: 0.6 breaks a constraint"):
        sensitivity_points(space, BASE, None, ["multimodal"])


def test_grid_searcher_points_drop_constraint_violations():
    space = load_space({"params": {"tau_min": {"low": 0.1, "high": 0.5, "grid": [0.1, 0.4]},
                                   "tau_max": {"low": 0.2, "high": 0.9, "grid": [0.3, 0.6]}},
                        "constraints": ["tau_min < tau_max"]})
    points = grid_points(space, BASE)
    assert {(p["balancer.tau_min"], p["balancer.tau_max"]) for p in points} == {(0.1, 0.3), (0.1, 0.6), (0.4, 0.6)}


@pytest.mark.parametrize("path", sorted((__import__("pathlib").Path(__file__).parent.parent / "study" / "configs").glob("*.yaml")))
def test_every_shipped_study_config_validates(path):
    from study.config import load_study_config

    cfg = load_study_config(str(path))
    assert cfg.name == path.stem


def test_cmaes_sampler_respects_the_constraint_too():
    define = define_by_run(load_space("redreg"), BASE)
    study = optuna.create_study(direction="maximize",
                                sampler=optuna.samplers.CmaEsSampler(seed=0, warn_independent_sampling=False))
    for _ in range(30):
        trial = study.ask()
        define(trial)
        assert trial.params["balancer.tau_min"] < trial.params["balancer.tau_max"]
        study.tell(trial, trial.params["balancer.gamma"])


def test_storage_checks_fail_fast(tmp_path, monkeypatch):
    import shutil as _shutil

    from study.records import check_storage

    monkeypatch.setattr("study.records.os.access", lambda path, mode: False)
    with pytest.raises(ConfigError, match="storage_path: .* is not writable"):
        check_storage(tmp_path / "runs" / "x")
    monkeypatch.undo()
    monkeypatch.setattr("study.records.shutil.disk_usage", lambda p: _shutil._ntuple_diskusage(10, 10, 1024))
    with pytest.raises(ConfigError, match="storage_path: only 0 MiB free"):
        check_storage(tmp_path / "runs" / "x")


def test_stratified_points_take_one_centre_per_stratum_of_every_range():
    from search_spaces import SearchSpace, stratified_points

    space = SearchSpace(params={
        "optim.lr": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True},
        "optim.weight_decay": {"type": "float", "low": 0.0, "high": 1e-3},
        "balancer.k": {"type": "int", "low": 1, "high": 4},
        "balancer.mode": {"type": "categorical", "choices": ["a", "b"]},
        "balancer.c": {"type": "float", "low": 0.0, "high": 1.0, "when": {"balancer.mode": "a"}},  # conditional
        "balancer.f": {"type": "fixed", "value": 3}})
    points = stratified_points(space, 4, seed=0)
    assert len(points) == 4 and all(set(p) == {"optim.lr", "optim.weight_decay", "balancer.k", "balancer.mode"}
                                     for p in points)
    assert sorted(p["optim.lr"] for p in points) == pytest.approx([10 ** (-3 + 2 * (i + 0.5) / 4) for i in range(4)])
    assert sorted(p["optim.weight_decay"] for p in points) == pytest.approx([1.25e-4, 3.75e-4, 6.25e-4, 8.75e-4])
    assert sorted(p["balancer.k"] for p in points) == [1, 2, 3, 4]
    assert sorted(p["balancer.mode"] for p in points) == ["a", "a", "b", "b"]
    assert stratified_points(space, 4, seed=0) == points  # seeded: the same design for every method and resume
    assert stratified_points(SearchSpace(), 4) == [] and stratified_points(space, 0) == []
