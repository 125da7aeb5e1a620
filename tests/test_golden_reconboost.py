"""ReconBoost through the real Trainer matches a loop written from the authors' stage loop, step for step,
over both modalities' turns and the global rectification phases."""
import pytest
import torch
from pydantic import BaseModel, ConfigDict

from golden import run_golden, tiny_config
from reference import reconboost
from trainables.balancers.reconboost import boosting_loss
from trainables.config import build_trial_config
from trainables.data.base import DatasetBundle, ModalitySpec, MultimodalTensorDataset
from trainables.data.registry import registered_dataset
from trainables.errors import ConfigError
from trainables.trainer import Trainer


def _turns(history, modalities):
    """Per epoch: the modality whose learner trained alone, or 'rectify'."""
    out = []
    for r in history:
        turn = [m for m in modalities if r[f"reconboost_turn_{m}"] == 1.0]
        assert len(turn) == (0 if r["reconboost_rectifying"] else 1)
        out.append(turn[0] if turn else "rectify")
    return out


@pytest.mark.parametrize("fusion, setting, stage_epochs, epochs, consolidation", [
    ("concat", "multimodal", (1, 1), 6, "detached"),
    ("late", "multimodal+unimodal", (1, 1), 6, "detached"),
    ("concat", "multimodal+unimodal", (2, 1), 7, "gradient"),
])
def test_reconboost_matches_the_authors_loop(fusion, setting, stage_epochs, epochs, consolidation):
    per_stage, correct = stage_epochs
    params = {"epochs_per_stage": per_stage, "correct_epochs": correct, "consolidation": consolidation}
    raw = tiny_config({"name": "reconboost", **params}, epochs=epochs, loss_setting=setting,
                      model={"feature_dim": 16, "fusion": fusion})
    trainer, _ = run_golden(raw, reconboost.train, **params)
    h = trainer.history
    expected = {(1, 1): ["audio", "rectify", "visual", "rectify", "audio", "rectify"],
                (2, 1): ["audio", "audio", "rectify", "visual", "visual", "rectify", "audio"]}[stage_epochs]
    assert _turns(h, trainer.modalities) == expected
    first_turn = [r for r in h if r["reconboost_stage"] == 0 and not r["reconboost_rectifying"]]
    later_turns = [r for r in h if r["reconboost_stage"] > 0 and not r["reconboost_rectifying"]]
    # stage 0: no other learner yet (the code's c0: weight 1 everywhere), no consolidation term
    assert all(r["reconboost_p_others"] == 1.0 and "reconboost_consolidation" not in r for r in first_turn)
    # later turns weigh samples by the other learner's true-class probability and measure the consolidation
    assert all(0 < r["reconboost_p_others"] < 1 and r["reconboost_consolidation"] > 0 for r in later_turns)
    # the boost rate is trained in the rectification only
    rates = [r["reconboost_boost_rate"] for r in h]
    assert rates[0] == 1.0 and len(set(rates)) > 2


class ThreeParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _three(_params) -> DatasetBundle:
    gen = torch.Generator().manual_seed(0)

    def split(n):
        y = torch.randint(3, (n,), generator=gen)
        return MultimodalTensorDataset({m: torch.randn(n, 6, generator=gen) + y[:, None] * s
                                        for m, s in (("text", 0.8), ("audio", 0.4), ("visual", 0.2))}, y)
    specs = {m: ModalitySpec("vector", (6,)) for m in ("text", "audio", "visual")}
    return DatasetBundle("three_vectors_rb", specs, 3, split(64), split(16), split(16))


@pytest.fixture(autouse=True, scope="module")
def _three_vectors_rb_dataset():
    with registered_dataset("three_vectors_rb", ThreeParams, _three):  # only while this file's tests run
        yield


def test_reconboost_three_modalities_match_the_authors_loop():
    """Three modalities in turn (the code's cyclic schedule, in the dataset's order), each against the
    learners trained before it and consolidated toward the previous turn's modality (with gradient: vector
    encoders have no BatchNorm, so the detached term would leave no trace of which learner it read)."""
    params = {"epochs_per_stage": 1, "correct_epochs": 1, "consolidation": "gradient"}
    raw = {"seed": 0, "epochs": 7, "device": "cpu", "dataset": {"name": "three_vectors_rb"},
           "model": {"feature_dim": 16, "fusion": "sum"},
           "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 1e-4, "batch_size": 16},
           "balancer": {"name": "reconboost", **params}}
    trainer, _ = run_golden(raw, reconboost.train, **params)
    assert _turns(trainer.history, trainer.modalities) == [
        "text", "rectify", "audio", "rectify", "visual", "rectify", "text"]
    assert {"test_acc_text", "test_acc_audio", "test_acc_visual"} <= set(trainer.best())


def test_boosting_loss_by_hand():
    # logits 0 over C = 2: log p(y) = log(1/2); (1/C)(-w1 + w2 p) log(1/2), averaged over the two samples
    logits, labels = torch.zeros(2, 2), torch.tensor([0, 1])
    p_join = torch.tensor([[1.0, 0.0], [1.0, 0.0]])  # the others: sure of class 0 (right, then wrong)
    expected = 0.5 * ((-5 + 1) * torch.log(torch.tensor(0.5)) / 2 + (-5) * torch.log(torch.tensor(0.5)) / 2)
    assert float(boosting_loss(logits, labels, p_join, 5.0, 1.0)) == pytest.approx(float(expected))
    # no other learner yet: the code's (B, 1) constant, softmax 1: every sample weighs w1 - w2
    ones = float(boosting_loss(logits, labels, torch.ones(2, 1), 5.0, 1.0))
    assert ones == pytest.approx(float(-4 * torch.log(torch.tensor(0.5)) / 2))


def test_prediction_is_the_ensemble_of_the_learners_trained_so_far():
    raw = tiny_config({"name": "reconboost", "epochs_per_stage": 1, "correct_epochs": 1}, epochs=1)
    trainer = Trainer(build_trial_config(raw))
    trainer.train_epoch()  # stage 0: only audio's learner exists
    feats = trainer.model.encode(trainer.state.inputs)
    block = trainer.model.fusion.block_logits(feats, "audio")
    assert torch.allclose(trainer.balancer.predict_logits(trainer.model, feats), block)


@pytest.mark.parametrize("fusion", ["film", "gated"])
def test_fusions_without_per_modality_blocks_are_refused(fusion):
    raw = tiny_config({"name": "reconboost"}, epochs=1, model={"feature_dim": 16, "fusion": fusion})
    with pytest.raises(ConfigError, match="model.fusion: .*allowed with balancer 'reconboost': concat, sum, late"):
        Trainer(build_trial_config(raw))
