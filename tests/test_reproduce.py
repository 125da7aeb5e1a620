"""Issue 17: a trial's numbers can be reproduced, or the re-run says why not.

- provenance: what a re-run that differs from its trial prints (unit tests, no Ray);
- checkpoints: a trainer resumed from a checkpoint continues exactly as the uninterrupted one, with a balancer
  and a dataset that draw from torch's, NumPy's and Python's global RNGs, in the main process and in loader
  workers (no Ray);
- integration (real Ray Tune, Optuna, MLflow on CPU): `mmstudy debug --from-run` reproduces a finished
  trial's MLflow per-epoch metrics exactly, and a trial whose driver was SIGKILLed mid-run and then resumed
  logs the same per-epoch metrics as the same config run uninterrupted.
"""
import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from trainables import provenance
from trainables.balancers.base import Balancer
from trainables.config import build_trial_config
from trainables.data.registry import build_dataset
from trainables.trainer import Trainer

TESTS = Path(__file__).resolve().parent


@pytest.fixture
def one_thread():
    """One torch thread: tiny models gain nothing from two, and lose much on a loaded 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------ provenance messages


def _cpu_provenance(**changes):
    here = {"threads": 1, "device": "cpu", "device_name": "Some CPU", "cpu_capability": "AVX2",
            "deterministic_algorithms": True, "cudnn_deterministic": False, "cudnn_benchmark": False,
            "precision": "fp32", "versions": {"python": "3.11.7", "torch": "2.14.1", "numpy": "2.4.6"},
            "git": {"commit": "a" * 40, "dirty": False, "diff_sha256": None}, "seeds": [0],
            "dataset": {"name": "synthetic", "size": "tiny", "seed": 0, "samples": {"train": 96, "val": 48, "test": 48}},
            "from_epoch": 0}
    for key, value in changes.items():
        here[key] = value
    return here


def _gpu_provenance(name="NVIDIA H100 80GB HBM3", **changes):
    return _cpu_provenance(device="cuda", device_name=name, deterministic_algorithms=False, cudnn_benchmark=True,
                           precision="bf16", **changes)


def test_identical_cpu_provenance_reproduces_exactly():
    exact, line = provenance.verdict("t_00001", _cpu_provenance(), _cpu_provenance(from_epoch=0))
    assert exact and line == "reproduces trial t_00001 exactly (CPU, deterministic)"
    # where the trial continued from a checkpoint does not matter: a resume is exact too
    assert provenance.verdict("t_00001", _cpu_provenance(from_epoch=2), _cpu_provenance())[0]


@pytest.mark.parametrize("trial, here, fragments", [
    (_cpu_provenance(threads=1), _cpu_provenance(threads=2),
     ["2 torch threads (the trial: 1)", "another order"]),
    (_cpu_provenance(), _cpu_provenance(cpu_capability="AVX512"),
     ["another CPU instruction set (AVX512; the trial: AVX2)", "not bit-identical"]),
    (_cpu_provenance(versions={"python": "3.11.7", "torch": "2.13.0", "numpy": "2.4.6"}), _cpu_provenance(),
     ["other library versions: torch 2.14.1 (the trial: 2.13.0)"]),
    (_cpu_provenance(git={"commit": "b" * 40, "dirty": False, "diff_sha256": None}), _cpu_provenance(),
     ["other code: commit aaaaaaaaaa (the trial: bbbbbbbbbb)"]),
    (_cpu_provenance(git={"commit": "a" * 40, "dirty": True, "diff_sha256": "123"}), _cpu_provenance(),
     ["the trial ran on a tree with uncommitted changes that this tree does not have"]),
    (_cpu_provenance(), _cpu_provenance(git={"commit": "a" * 40, "dirty": True, "diff_sha256": "456"}),
     ["this tree has uncommitted changes the trial did not have"]),
    (_cpu_provenance(git={"commit": None, "dirty": None, "diff_sha256": None}), _cpu_provenance(),
     ["code version unknown (the trial: not a git checkout)"]),
    (_cpu_provenance(dataset={"name": "crema_d", "root": "/data/c", "manifest_sha256": "x1",
                              "samples": {"train": 1, "val": 1, "test": 1}}),
     _cpu_provenance(dataset={"name": "crema_d", "root": "/data/c", "manifest_sha256": "y2",
                              "samples": {"train": 1, "val": 1, "test": 1}}),
     ["another dataset (manifest_sha256 y2; the trial: x1)"]),
    (_gpu_provenance(), _cpu_provenance(),
     ["the trial ran on cuda (NVIDIA H100 80GB HBM3), this run on cpu (Some CPU)",
      "a GPU run is seeded but not bit-identical", "0.02 accuracy"]),
    (_gpu_provenance(), _gpu_provenance(),
     ["a GPU run is seeded but not bit-identical: expect differences of about 0.02 accuracy", "docs/benchmarks.md"]),
    (_gpu_provenance("NVIDIA A100-SXM4-40GB"), _gpu_provenance(),
     ["another GPU model (NVIDIA H100 80GB HBM3; the trial: NVIDIA A100-SXM4-40GB)"]),
])
def test_a_difference_is_named_with_what_it_means(trial, here, fragments):
    exact, line = provenance.verdict("t_00001", trial, here)
    assert not exact and line.startswith("does not reproduce trial t_00001 exactly: ")
    for fragment in fragments:
        assert fragment in line, line
    assert "\n" not in line


def test_a_dirty_tree_with_the_same_changes_still_reproduces_and_says_so():
    dirty = {"commit": "a" * 40, "dirty": True, "diff_sha256": "123"}
    exact, line = provenance.verdict("t_1", _cpu_provenance(git=dirty), _cpu_provenance(git=dict(dirty)))
    assert exact and line.startswith("reproduces trial t_1 exactly (CPU, deterministic)")
    assert "same uncommitted changes" in line


def test_config_changes_and_a_run_without_provenance_are_said():
    exact, line = provenance.verdict("t_1", _cpu_provenance(), _cpu_provenance(), ["optim.lr"])
    assert not exact and "config changed here: optim.lr" in line
    exact, line = provenance.verdict("t_1", None, _cpu_provenance())
    assert not exact and line.startswith("cannot tell whether this reproduces trial t_1") and "1 torch thread " in line


def test_settings_a_rerun_applies():
    # the trial's thread count unless --threads says otherwise
    assert provenance.applied_settings(_cpu_provenance(threads=1), None, cuda_available=True) == \
        {"threads": 1, "device": "cpu"}  # a CPU trial stays on the CPU where a GPU is free
    assert provenance.applied_settings(_cpu_provenance(threads=1), 4, cuda_available=False)["threads"] == 4
    assert provenance.applied_settings(_gpu_provenance(), None, cuda_available=True)["device"] == "cuda"
    assert provenance.applied_settings(_gpu_provenance(), None, cuda_available=False)["device"] == "cpu"
    assert provenance.applied_settings(None, None, cuda_available=False) == {}


def test_a_trainer_records_its_threads_dataset_versions_and_code(one_thread):
    cfg = build_trial_config({"epochs": 1, "dataset": {"name": "synthetic", "n_train": 64, "n_val": 32, "n_test": 32}})
    recorded = json.loads(provenance.to_json(provenance.collect(Trainer(cfg), [0, 1])))
    assert recorded["threads"] == 1 and recorded["device"] == "cpu" and recorded["deterministic_algorithms"] is True
    assert recorded["precision"] == "fp32" and recorded["seeds"] == [0, 1]
    assert recorded["dataset"] == {"name": "synthetic", "size": "tiny", "seed": 0,
                                   "samples": {"train": 64, "val": 32, "test": 32}}
    assert recorded["versions"]["torch"] == torch.__version__.split("+")[0] or recorded["versions"]["torch"] == torch.__version__
    assert set(provenance.PACKAGES) <= set(recorded["versions"])
    assert set(recorded["git"]) == {"commit", "dirty", "diff_sha256"}


def test_the_largest_difference_from_a_runs_history_is_found_and_said(tmp_path):
    from mlflow.tracking import MlflowClient

    from study.debug import largest_difference

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    run_id = client.create_run(client.create_experiment("diff")).info.run_id
    for epoch, (acc, loss) in enumerate([(0.25, 1.5), (0.5, 1.25), (float("nan"), 1.0)], start=1):
        client.log_metric(run_id, "val_acc", acc, step=epoch)
        client.log_metric(run_id, "train_loss", loss, step=epoch)
    rows = [{"epoch": 1, "val_acc": 0.25, "train_loss": 1.5, "epoch_time_s": 3.0, "not_logged": 1.0},
            {"epoch": 2, "val_acc": 0.5, "train_loss": 1.25, "epoch_time_s": 9.0, "not_logged": 2.0},
            {"epoch": 3, "val_acc": float("nan"), "train_loss": 1.0, "epoch_time_s": 1.0, "not_logged": 3.0}]
    same = largest_difference(client, run_id, rows)
    assert same["max_abs_diff"] == 0.0 and same["compared_metrics"] == ["train_loss", "val_acc"]
    assert same["compared_epochs"] == [1, 2, 3] and "exactly" in same["line"]
    rows[1] = dict(rows[1], val_acc=0.4375, train_loss=1.2)
    other = largest_difference(client, run_id, rows)
    assert other["max_abs_diff"] == pytest.approx(0.0625) and other["max_diff_metric"] == "val_acc"
    assert other["max_diff_epoch"] == 2 and other["val_acc_max_abs_diff"] == pytest.approx(0.0625)
    assert "0.0625 in val_acc at epoch 2" in other["line"]
    rows[2] = dict(rows[2], val_acc=0.5)  # a number where the trial had NaN (diverged)
    assert largest_difference(client, run_id, rows)["max_abs_diff"] == float("inf")


# ------------------------------------------------------------------ checkpoints continue every RNG stream


class GlobalRngNoise(Balancer):
    """Scales each step's loss by draws from NumPy's and Python's global RNGs (as a researcher's plug-in
    might), so a resume that restarted either stream would train differently."""

    name = "global_rng_noise"

    def after_loss(self, state):
        state.loss = state.loss * (1.0 + 0.2 * (np.random.rand() - 0.5) + 0.2 * (random.random() - 0.5))


class AugmentedSplit(Dataset):
    """A split whose samples get random augmentations from all three global RNGs, drawn in loader workers."""

    def __init__(self, base):
        self.base = base

    def __len__(self):
        return len(self.base)

    def __getitem__(self, index):
        inputs, label = self.base[index]
        scale = 1.0 + 0.3 * (float(torch.rand(())) + float(np.random.rand()) + random.random() - 1.5)
        return {m: x * scale for m, x in inputs.items()}, label


def _augmented_data(cfg):
    data = build_dataset(cfg.dataset.name, cfg.dataset_params())
    data.train = AugmentedSplit(data.train)
    return data


def _same_history(a: list[dict], b: list[dict]) -> bool:
    """Equal epoch by epoch, to the bit, NaN equal to NaN (a metric undefined by construction); wall time aside."""
    def same(x, y):
        return x == y or (isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y))

    keys = lambda r: set(r) - {"epoch_time_s"}  # noqa: E731
    return len(a) == len(b) and all(keys(r) == keys(q) and all(same(r[k], q[k]) for k in keys(r))
                                    for r, q in zip(a, b))


@pytest.mark.parametrize("num_workers", [0, 1])
def test_a_resumed_trainer_continues_every_rng_stream(tmp_path, num_workers, one_thread):
    raw = {"epochs": 3, "num_workers": num_workers, "balancer": {"name": "test_reproduce:GlobalRngNoise"},
           "dataset": {"name": "synthetic", "n_train": 64, "n_val": 16, "n_test": 16}, "optim": {"batch_size": 32},
           "model": {"feature_dim": 8}}
    cfg = build_trial_config(raw)
    whole = Trainer(cfg, data=_augmented_data(cfg))
    whole.fit()
    first = Trainer(cfg, data=_augmented_data(cfg))
    first.train_epoch()
    first.save(str(tmp_path / "ckpt.pt"))
    # the process goes on drawing (another trial, a new epoch's loader): the resume must not see any of it
    random.random(), np.random.rand(), torch.rand(3)
    resumed = Trainer(cfg, data=_augmented_data(cfg))
    resumed.load(str(tmp_path / "ckpt.pt"))
    resumed.fit()
    assert _same_history(resumed.history, whole.history)
    for name, value in whole.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name


# ------------------------------------------------------------------ integration: Ray Tune + Optuna + MLflow

COMPARED = ("val_acc", "val_f1", "test_acc", "train_loss", "val_acc_audio", "val_acc_visual")


def _mlflow_history(client, run_id, key):
    return {int(m.step): m.value for m in client.get_metric_history(run_id, key)}


@pytest.mark.integration
def test_debug_from_run_reproduces_a_finished_trial_exactly(tmp_path, ray_local, capsys):
    """Two seeds in lockstep, the trial on one Ray CPU (one torch thread), this process with two threads:
    `debug --from-run` applies the trial's thread count and must give the logged numbers to the last bit."""
    from mlflow.tracking import MlflowClient

    from study.cli import main
    from study.config import load_study_config
    from study.runner import run_study
    from test_study_integration import TINY_TRIAL, children, study_raw  # the shared study helpers

    trial = dict(TINY_TRIAL, epochs=2, balancer={"name": "redreg"})
    cfg = load_study_config(None, raw=study_raw(tmp_path, "exact", num_samples=1, scheduler="none", seeds=[0, 1],
                                                trial=trial, search_space=None, mode="compare",
                                                variants={"only": {}}))
    run_study(cfg, verbose=0)
    client = MlflowClient(cfg.resolved_tracking_uri())
    _, runs = children(client, cfg.study_dir())
    (run,) = runs
    recorded = json.loads(run.data.tags["mmstudy.provenance"])
    assert recorded["threads"] == 1 and recorded["seeds"] == [0, 1] and recorded["device"] == "cpu"
    assert torch.get_num_threads() != 1  # so the re-run has a thread count to apply
    capsys.readouterr()
    out = tmp_path / "debug"
    assert main(["debug", "--from-run", run.info.run_id, "--tracking-uri", cfg.resolved_tracking_uri(),
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    payload = json.loads((out / "metrics.json").read_text())
    for key in COMPARED:
        logged = _mlflow_history(client, run.info.run_id, key)
        rerun = {int(r["epoch"]): r[key] for r in payload["history"]}
        assert rerun == logged and sorted(logged) == [1, 2], (key, rerun, logged)
    assert payload["comparison"]["max_abs_diff"] == 0.0
    assert "matches the trial's MLflow history exactly" in printed
    trial_id = run.data.tags["mmstudy.trial_id"]
    if recorded["git"]["commit"] is not None and recorded["git"] == provenance.git_state():
        assert f"reproduces trial {trial_id} exactly (CPU, deterministic)" in printed, printed
    else:  # not a git checkout (an exported tree), or the tree changed while the test ran: said, and only that
        verdict = printed.splitlines()[0]
        assert verdict.startswith(f"does not reproduce trial {trial_id} exactly: ") and "thread" not in verdict
        assert "code version unknown" in verdict or "uncommitted changes" in verdict, verdict
    assert torch.get_num_threads() != 1  # the caller's own setting is back


def _epochs_of(tune_dir: Path) -> list[int]:
    out = []
    for result in tune_dir.glob("*/result.json"):
        for line in result.read_text().splitlines():
            try:
                out.append(json.loads(line)["training_iteration"])
            except (ValueError, KeyError):
                pass  # a line being written
    return out


def _state_just_saved_with_a_checkpoint(tune_dir: Path) -> bool:
    """Tune's experiment state was written in the last half second (so the next write, which a kill could
    tear, is not due yet) and names a trial checkpoint: a resume will continue the trial from it."""
    states = sorted(tune_dir.glob("experiment_state-*.json"), key=lambda p: p.stat().st_mtime)
    if not states or time.time() - states[-1].stat().st_mtime > 0.5:
        return False
    text = states[-1].read_text()
    try:
        json.loads(text)
    except ValueError:
        return False
    return "checkpoint_0000" in text


@pytest.mark.integration
def test_a_trial_killed_mid_run_resumes_to_the_uninterrupted_numbers(tmp_path):
    """The driver is SIGKILLed while the only trial is between epochs; `mmstudy resume` continues it from its
    checkpoint. Its MLflow per-epoch metrics must equal the same config run in one go (in this process, with
    the trial's thread count). The balancer and noise draw from NumPy's and Python's RNGs too."""
    from mlflow.tracking import MlflowClient

    from study.cli import main
    from test_study_integration import TINY_TRIAL, _trial_dirs, children, study_raw  # the shared study helpers

    trial = dict(TINY_TRIAL, epochs=5, balancer={"name": "test_reproduce:GlobalRngNoise"},
                 dataset=dict(TINY_TRIAL["dataset"], n_train=480))
    raw = study_raw(tmp_path, "killed1", num_samples=1, max_concurrent=1, scheduler="none", seeds=[0],
                    trial=trial, search_space=None, mode="compare", variants={"only": {}})
    config = tmp_path / "killed1.yaml"
    config.write_text(json.dumps(raw))
    # the driver and Ray's workers import this checkout (and the test balancer), as this process does
    pythonpath = os.pathsep.join(p for p in (str(TESTS), str(TESTS.parent), os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=pythonpath, TUNE_GLOBAL_CHECKPOINT_S="1")
    log = open(tmp_path / "driver.log", "w")
    driver = subprocess.Popen([sys.executable, "-m", "study.cli", "run", str(config), "--verbose", "0"],
                              stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path, start_new_session=True)
    tune_dir = tmp_path / "runs" / "killed1" / "tune"
    deadline = time.time() + 300
    while time.time() < deadline and driver.poll() is None and not (
            _state_just_saved_with_a_checkpoint(tune_dir) and max(_epochs_of(tune_dir), default=5) < 5):
        time.sleep(0.05)
    at_kill, at_kill_dirs = _epochs_of(tune_dir), _trial_dirs(tune_dir)
    os.kill(driver.pid, signal.SIGKILL)  # the driver dies mid-trial
    driver.wait()
    time.sleep(2)
    try:
        os.killpg(driver.pid, signal.SIGKILL)  # and the local Ray it had started
    except ProcessLookupError:
        pass
    assert at_kill and max(at_kill) < 5, (at_kill, (tmp_path / "driver.log").read_text()[-2000:])
    resume = subprocess.run([sys.executable, "-m", "study.cli", "resume", str(tmp_path / "runs" / "killed1"),
                             "--verbose", "0", "--allow-plugin"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=400)
    assert resume.returncode == 0, resume.stdout[-3000:] + resume.stderr[-3000:]
    results = [json.loads(line) for result in tune_dir.glob("*/result.json")
               for line in result.read_text().splitlines() if line.strip()]
    # it continued from a checkpoint (not from scratch): an epoch > 1 was the first since the restore
    assert any(r["iterations_since_restore"] < r["training_iteration"] for r in results), (
        f"epochs reported at the kill: {at_kill}\n{at_kill_dirs}\nafter the resume (epoch, since restore): "
        f"{[(r['training_iteration'], r['iterations_since_restore']) for r in results]}\n{_trial_dirs(tune_dir)}\n"
        f"resume printed:\n{resume.stdout[-2000:]}{resume.stderr[-2000:]}")
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    _, runs = children(client, tmp_path / "runs" / "killed1")
    (run,) = runs
    assert run.info.status == "FINISHED"
    # the uninterrupted run: the same config from its MLflow run, in one go, with the trial's thread count
    out = tmp_path / "uninterrupted"
    assert main(["debug", "--from-run", run.info.run_id, "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db",
                 "--out", str(out), "--allow-plugin"]) == 0
    history = json.loads((out / "metrics.json").read_text())["history"]
    for key in COMPARED:
        logged = _mlflow_history(client, run.info.run_id, key)
        assert {r["epoch"]: r[key] for r in history} == logged, (key, logged)
    # an epoch the killed driver had seen and the resumed trial ran again was the same too
    by_epoch: dict[int, set] = {}
    for r in results:
        by_epoch.setdefault(r["training_iteration"], set()).add(r["val_acc"])
    assert all(len(v) == 1 for v in by_epoch.values()), by_epoch
