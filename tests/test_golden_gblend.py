"""G-Blending through the real Trainer matches an independent online G-Blend loop; its V is held out of the
training split (seeded), never taken from validation or test."""
import pytest
import torch
from torch.utils.data import DataLoader, Subset

from golden import default_dtype, run_golden, tiny_config
from reference import gblend
from trainables.balancers.gblend import blend_weights
from trainables.config import build_trial_config
from trainables.data.base import model_input
from trainables.data.registry import build_dataset
from trainables.trainer import Trainer


def _holdout_batches(raw, fraction):
    """The held-out part, split here independently: a seeded permutation, the first round(f * n) indices;
    made in float64, the dtype of the golden runs."""
    with default_dtype():
        return _split_holdout(raw, fraction)


def _split_holdout(raw, fraction):
    cfg = build_trial_config(raw)
    data = build_dataset(cfg.dataset.name, cfg.dataset_params())
    n = len(data.train)
    held = sorted(torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed)).tolist()[:round(fraction * n)])
    loader = DataLoader(Subset(data.train, held), batch_size=2 * cfg.optim.batch_size, shuffle=False)
    return [({m: model_input(x[m], data.modalities[m], torch.device("cpu")) for m in x}, y) for x, y in loader], held


@pytest.mark.parametrize("fusion", ["concat", "late"])
def test_gblend_matches_the_reference_loop(fusion):
    raw = tiny_config({"name": "gblend", "super_epoch": 2, "holdout_fraction": 0.1}, n_train=70,
                      loss_setting="multimodal+unimodal", model={"feature_dim": 16, "fusion": fusion})
    holdout, _ = _holdout_batches(raw, 0.1)
    trainer, ref = run_golden(raw, gblend.train, holdout=holdout, super_epoch=2)
    weights = [r["gblend_w_fused"] for r in trainer.history]
    assert weights[0] == weights[1] != weights[2] == weights[3] != weights[4]  # re-estimated every 2 epochs
    for record, seen in zip(trainer.history, ref.weights_seen):
        assert sum(record[f"gblend_w_{k}"] for k in seen) == pytest.approx(1.0)
        assert all(record[f"gblend_w_{k}"] == pytest.approx(w, rel=1e-6) for k, w in seen.items())


def test_gblend_under_multimodal_is_joint_training_on_the_rest():
    raw = tiny_config({"name": "gblend", "super_epoch": 2}, n_train=70, loss_setting="multimodal")
    holdout, _ = _holdout_batches(raw, 0.1)
    trainer, _ = run_golden(raw, gblend.train, holdout=holdout, super_epoch=2)
    assert trainer.history[-1]["gblend_w_fused"] == 1.0


def test_holdout_comes_from_the_training_split_only():
    raw = tiny_config({"name": "gblend", "holdout_fraction": 0.2}, n_train=70, epochs=1)
    trainer = Trainer(build_trial_config(raw))
    _, held = _holdout_batches(raw, 0.2)
    assert trainer.state.holdout_loader.dataset.dataset is trainer.data.train
    assert trainer.state.holdout_loader.dataset.indices == held and len(held) == 14
    trained = set(trainer.train_set.indices)
    assert not trained & set(held) and len(trained) + len(held) == 70
    assert trainer.state.steps_per_epoch == 4  # 56 samples in batches of 16


def test_blend_weights_by_hand():
    # head a: L_V 1.0 -> 0.8 (dG 0.2), O 0.1 -> 0.3 (dO 0.2): 0.2 / 0.04 = 5
    # head b: L_V 1.0 -> 0.9 (dG 0.1), O 0.1 -> 0.2 (dO 0.1): 0.1 / 0.01 = 10
    # head c: L_V rises: dG = 0 -> floor 1e-8
    w = blend_weights({"a": (0.9, 1.0), "b": (0.9, 1.0), "c": (0.9, 1.0)},
                      {"a": (0.5, 0.8), "b": (0.7, 0.9), "c": (0.5, 1.1)})
    assert w["a"] == pytest.approx(5 / 15) and w["b"] == pytest.approx(10 / 15) and w["c"] < 1e-8
