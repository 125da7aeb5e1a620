"""Shapley modality contributions and the imbalance degree against hand computations, and their wiring into
the trainer's per-epoch evaluation (validation and test)."""
import math

import pytest
import torch

from trainables.config import build_trial_config
from trainables.contribution import CoalitionAccuracy, coalitions, imbalance_degree, masked, shapley_values
from trainables.trainer import Trainer


def vote_head(weights: dict[str, float], bias: list[float]):
    """A fused head whose per-modality outputs are known: each modality's feature is a one-hot class vote,
    logits = sum_m weight_m * vote_m + bias. A masked modality's vote is all zeros."""
    b = torch.tensor(bias)
    return lambda feats: sum(weights[m] * f for m, f in feats.items()) + b


def votes(classes: list[int], k: int = 3) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(classes), k).float()


def test_two_modalities_by_hand():
    labels = torch.tensor([0, 1, 2, 1])
    feats = {"audio": votes([0, 1, 1, 1]), "visual": votes([0, 2, 2, 0])}
    acc = CoalitionAccuracy(["audio", "visual"])
    acc.add(vote_head({"audio": 2.0, "visual": 1.0}, [0.5, 0.0, 0.0]), feats, labels)
    # v(∅): bias only -> class 0 -> 1/4. v(a): audio's vote wins -> samples 0,1,3 -> 3/4.
    # v(v): visual's vote (1) beats the bias (0.5) -> preds 0,2,2,0 -> 2/4. v(a,v): 0,1,1,1 -> 3/4.
    assert acc.values() == {frozenset(): 0.25, frozenset({"audio"}): 0.75, frozenset({"visual"}): 0.5,
                            frozenset({"audio", "visual"}): 0.75}
    m = acc.metrics()
    # phi_a = 1/2 [(3/4 - 1/4) + (3/4 - 2/4)] = 0.375; phi_v = 1/2 [(2/4 - 1/4) + (3/4 - 3/4)] = 0.125
    assert m["shapley_audio"] == pytest.approx(0.375) and m["shapley_visual"] == pytest.approx(0.125)
    assert m["imbalance"] == pytest.approx(0.25 / 0.5)
    assert len(acc.subsets) == 4  # two modalities: 4 fused passes


def test_batches_accumulate_like_one_pass():
    labels = torch.tensor([0, 1, 2, 1])
    feats = {"audio": votes([0, 1, 1, 1]), "visual": votes([0, 2, 2, 0])}
    head = vote_head({"audio": 2.0, "visual": 1.0}, [0.5, 0.0, 0.0])
    split = CoalitionAccuracy(["audio", "visual"])
    split.add(head, {m: f[:3] for m, f in feats.items()}, labels[:3])
    split.add(head, {m: f[3:] for m, f in feats.items()}, labels[3:])
    assert split.metrics() == pytest.approx({"shapley_audio": 0.375, "shapley_visual": 0.125, "imbalance": 0.5})


def test_three_modalities_by_hand():
    v = {frozenset(): 0.0, frozenset("a"): 0.6, frozenset("b"): 0.3, frozenset("c"): 0.1,
         frozenset("ab"): 0.7, frozenset("ac"): 0.6, frozenset("bc"): 0.3, frozenset("abc"): 0.8}
    phi = shapley_values(v, ["a", "b", "c"])
    # weights |S| = 0: 1/3, 1: 1/6, 2: 1/3
    assert phi["a"] == pytest.approx(0.6 / 3 + (0.4 + 0.5) / 6 + 0.5 / 3)
    assert phi["b"] == pytest.approx(0.3 / 3 + (0.1 + 0.2) / 6 + 0.2 / 3)
    assert phi["c"] == pytest.approx(0.1 / 3 + 0.0 / 6 + 0.1 / 3)
    assert sum(phi.values()) == pytest.approx(0.8)  # efficiency: v(M) - v(∅)
    assert imbalance_degree(phi) == pytest.approx((0.3 + 0.45 + 0.15) / (2 * 0.8))
    assert len(coalitions(["a", "b", "c"])) == 8


def test_imbalance_bounds_and_masking():
    assert imbalance_degree({"a": 0.3, "v": 0.3}) == 0.0
    assert imbalance_degree({"a": 0.4, "v": 0.0}) == pytest.approx(1.0)
    assert math.isnan(imbalance_degree({"a": 0.0, "v": 0.0}))
    feats = {"a": torch.ones(2, 3), "v": torch.full((2, 3), 2.0)}
    out = masked(feats, frozenset({"v"}))
    assert torch.equal(out["a"], torch.zeros(2, 3)) and out["v"] is feats["v"]


def test_trainer_logs_contributions_for_validation_and_test():
    cfg = build_trial_config({"epochs": 1, "dataset": {"name": "synthetic", "size": "tiny", "n_train": 64,
                                                       "n_val": 32, "n_test": 32},
                              "model": {"feature_dim": 8}, "optim": {"batch_size": 32}})
    trainer = Trainer(cfg)
    record = trainer.train_epoch()
    for split in ("val", "test"):
        phi = {m: record[f"{split}_shapley_{m}"] for m in trainer.modalities}
        # v(∅) is the fused head on all-zero features: a constant class for every sample
        trainer.model.eval()
        labels = torch.cat([y for _, y in trainer.eval_loaders[split]])
        with torch.no_grad():
            zeros = {m: torch.zeros(1, cfg.model.feature_dim) for m in trainer.modalities}
            empty = (labels == trainer.model.fuse(zeros).argmax(1)).float().mean().item()
        assert sum(phi.values()) == pytest.approx(record[f"{split}_acc"] - empty)
        degree = imbalance_degree(phi)
        if math.isnan(degree):  # undefined degrees are left out of the record, never NaN in a history
            assert f"{split}_imbalance" not in record
        else:
            assert record[f"{split}_imbalance"] == pytest.approx(degree)
    assert "test_shapley_audio" in trainer.best()
    assert all(not (isinstance(v, float) and math.isnan(v)) for v in record.values())
