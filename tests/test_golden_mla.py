"""MLA through the real Trainer vs. the plain loop written from the authors' code (tests/reference/mla.py):
alternating per-modality turns on a shared head, with and without the head-gradient projection; and the
test-time fusion by hand."""
import math

import pytest
import torch
from pydantic import BaseModel, ConfigDict

from golden import run_golden, tiny_config
from reference import mla as reference
from trainables.balancers.mla import batch_entropy, fusion_weights, projection_alpha, projector_update
from trainables.config import build_trial_config
from trainables.data.base import DatasetBundle, ModalitySpec, MultimodalTensorDataset
from trainables.data.registry import registered_dataset
from trainables.errors import ConfigError
from trainables.trainer import Trainer


def _turns_and_projector(trainer, ref):
    assert trainer.balancer.turns == ref.turns == len(trainer.modalities) * trainer.state.step
    assert float((trainer.balancer.P - ref.P).abs().max()) <= 1e-5


@pytest.mark.parametrize("fusion, setting", [("concat", "multimodal"), ("late", "multimodal+unimodal")])
def test_mla_code_variant_matches_the_authors_loop(fusion, setting):
    raw = tiny_config({"name": "mla"}, epochs=5, model={"feature_dim": 16, "fusion": fusion}, loss_setting=setting)
    trainer, ref = run_golden(raw, reference.train)  # 5 epochs x 4 batches x 2 turns = 40 optimizer steps
    _turns_and_projector(trainer, ref)
    assert all(r[f"mla_grad_ratio_{m}"] == 1.0 for r in trainer.history for m in trainer.modalities)
    assert torch.equal(trainer.balancer.P, torch.eye(16))  # the code's projection never runs


@pytest.mark.parametrize("fusion, setting", [("concat", "multimodal+unimodal"), ("late", "multimodal")])
def test_mla_paper_variant_with_projection_matches_the_loop(fusion, setting):
    raw = tiny_config({"name": "mla", "variant": "paper", "projection_alpha": 0.2}, epochs=5,
                      model={"feature_dim": 16, "fusion": fusion}, loss_setting=setting)
    trainer, ref = run_golden(raw, reference.train, projection=True, projection_alpha=0.2)
    _turns_and_projector(trainer, ref)
    # phases: the first turn of the run is not projected (its ratio is 1), every later one is (ratio < 1)
    first = trainer.history[0]["mla_grad_ratio_audio"]
    assert 1.0 > first > (1.0 + 3 * 0.0) / 4  # mean of 1 (first turn) and three projected turns
    assert all(r[f"mla_grad_ratio_{m}"] < 1.0 for r in trainer.history[1:] for m in trainer.modalities)
    assert abs(float(torch.norm(trainer.balancer.P, p="fro")) - 1.0) < 1e-5


class _ThreeParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _three(_params) -> DatasetBundle:
    gen = torch.Generator().manual_seed(3)
    names = ("text", "audio", "visual")

    def split(n):
        y = torch.randint(3, (n,), generator=gen)
        return MultimodalTensorDataset({m: torch.randn(n, 6, generator=gen) + y[:, None] * (i + 1) * 0.3
                                        for i, m in enumerate(names)}, y)
    return DatasetBundle("mla_three", {m: ModalitySpec("vector", (6,)) for m in names}, 3, split(64), split(16), split(16))


@pytest.fixture(autouse=True, scope="module")
def _mla_three_dataset():
    with registered_dataset("mla_three", _ThreeParams, _three):  # only while this file's tests run
        yield


def test_mla_three_modalities_match_the_loop():
    raw = {"seed": 0, "epochs": 3, "device": "cpu", "dataset": {"name": "mla_three"}, "model": {"feature_dim": 8},
           "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 1e-4, "batch_size": 16},
           "balancer": {"name": "mla", "projection": True}}
    trainer, ref = run_golden(raw, reference.train, min_steps=12, projection=True)  # 12 batches x 3 turns
    _turns_and_projector(trainer, ref)
    assert {"mla_weight_text", "mla_weight_audio", "mla_weight_visual"} <= set(trainer.history[-1])
    assert {"test_acc_text", "test_acc_audio", "test_acc_visual"} <= set(trainer.best())


# ----------------------------------------------------------------------------- pure functions by hand


def test_batch_entropy_is_over_the_batch_dimension():
    # three samples, two classes, softmax down each column: column 0 = (0, 0, 0) -> 1/3 each, H = log 3;
    # column 1 = (0, 0, log 2) -> (1/4, 1/4, 1/2), H = 1/2 log 4 + 1/2 log 2 (per-row softmax gives 2.02)
    logits = torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.0, math.log(2.0)]])
    expected = math.log(3) + 0.5 * math.log(4) + 0.5 * math.log(2)
    assert float(batch_entropy(logits)) == pytest.approx(expected, abs=1e-6)


def test_fusion_weights_favour_the_certain_modality():
    sure, unsure = torch.tensor([[10.0, 0.0]]), torch.tensor([[0.0, 0.0]])
    w = fusion_weights([sure, unsure], "sample")  # H_sure ~ 0, H_unsure = log 2: w = (2, 1) / 3
    assert w[:, 0].tolist() == pytest.approx([2 / 3, 1 / 3], abs=1e-3)
    assert fusion_weights([unsure, unsure], "batch").tolist() == pytest.approx([0.5, 0.5])


def test_projector_update_by_hand():
    # P = I (2 x 2), r = (1, 0), alpha = 1: k = (1, 0)^T, P - k k^T / (1 + 1) = diag(1/2, 1), / ||.||_F
    P = projector_update(torch.eye(2), torch.tensor([[1.0, 0.0]]), 1.0)
    assert P.flatten().tolist() == pytest.approx([0.5 / math.sqrt(1.25), 0.0, 0.0, 1 / math.sqrt(1.25)])
    assert projection_alpha(0.1, 0, 4) == pytest.approx(0.1) and projection_alpha(0.1, 2, 4) == pytest.approx(0.1 ** 1.5)


def test_mla_predicts_by_its_shared_head_and_refuses_fused_block_heads():
    trainer = Trainer(build_trial_config(tiny_config({"name": "mla", "variant": "paper"}, epochs=1)))
    feats = trainer.model.encode({m: torch.randn(4, *trainer.data.modalities[m].shape) for m in trainer.modalities})
    head = trainer.balancer.head
    outs = [head(feats[m]) for m in trainer.modalities]
    w = fusion_weights(outs, "sample")
    expected = w[0][:, None] * outs[0] + w[1][:, None] * outs[1]
    assert torch.allclose(trainer.balancer.predict_logits(trainer.model, feats), expected)
    with pytest.raises(ConfigError, match="model.unimodal_head: 'fused_block' cannot be used with balancer 'mla'"):
        Trainer(build_trial_config(tiny_config({"name": "mla"}, model={"unimodal_head": "fused_block"})))


def test_mla_resumes_from_a_checkpoint_as_if_uninterrupted(tmp_path):
    """P, the turn counter and the shared head travel in the checkpoint (paper variant: P changes every turn)."""
    raw = tiny_config({"name": "mla", "variant": "paper"}, epochs=3)
    full = Trainer(build_trial_config(raw)).fit()["history"]
    first = Trainer(build_trial_config(raw))
    first.train_epoch()
    first.save(tmp_path / "ckpt.pt")
    resumed = Trainer(build_trial_config(raw))
    resumed.load(tmp_path / "ckpt.pt")
    assert resumed.balancer.turns == 8 and not torch.equal(resumed.balancer.P, torch.eye(16))
    strip = lambda h: [{k: v for k, v in r.items() if k != "epoch_time_s"} for r in h]  # noqa: E731
    assert strip(resumed.fit()["history"]) == strip(full)
