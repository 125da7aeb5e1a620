"""AGM through the real Trainer vs. the plain loop written from the authors' code (tests/reference/agm.py)."""
import pytest
import torch

from golden import run_golden, tiny_config, vector_pair_config, vector_pair_dataset
from reference import agm as reference
from trainables.config import build_trial_config
from trainables.trainer import Trainer


@pytest.fixture(autouse=True, scope="module")
def _vector_pair():
    with vector_pair_dataset():  # only while this file's tests run
        yield


@pytest.mark.parametrize("fusion,setting,lr", [("concat", "multimodal", 0.2), ("late", "multimodal+unimodal", 0.05)])
def test_agm_matches_the_authors_loop(fusion, setting, lr):
    params = {"alpha": 2.5, "modulation_starts": 1, "modulation_ends": 3}
    raw = tiny_config({"name": "agm", **params}, epochs=5, model={"feature_dim": 16, "fusion": fusion},
                      loss_setting=setting, optim={"lr": lr})
    trainer, _ = run_golden(raw, reference.train, **params)
    h = trainer.history
    assert [r["agm_active"] for r in h] == [0.0, 1.0, 1.0, 1.0, 0.0]
    assert h[0]["agm_coeff_audio"] == h[0]["agm_coeff_visual"] == 1.0  # before the window: untouched
    assert all(r["agm_coeff_audio"] != 1.0 for r in h[1:])  # set in the window, kept after it (as the code)
    # On the synthetic benchmark audio leads (it learns faster than its history says): AGM slows audio and
    # speeds visual up in every window epoch. Swapped o_a / o_v labels would report the opposite.
    coeffs = [(r["agm_coeff_audio"], r["agm_coeff_visual"]) for r in h[1:4]]
    assert all(k_a < 1.0 < k_v for k_a, k_v in coeffs), coeffs


def test_agm_clips_on_either_bound_like_the_authors_loop():
    """Inputs scaled by 15 under FiLM fusion: the fusion gradients cross [-1, 1] at some steps, on the upper
    bound alone at some (max in (1, 2]) and on the lower bound alone at others (min in [-2, -1)), so a clip
    rule with either bound moved, or clipping on one side only, leaves another trajectory."""
    params = {"alpha": 2.5, "modulation_starts": 0, "modulation_ends": 3}
    trainer, ref = run_golden(vector_pair_config({"name": "agm", **params}, fusion="film", scale=15.0),
                              reference.train, **params)
    ranges = ref.fusion_grad_range
    assert any(1.0 < high <= 2.0 and low >= -1.0 for high, low in ranges), ranges  # the upper bound alone
    assert any(-2.0 <= low < -1.0 and high <= 1.0 for high, low in ranges), ranges  # the lower bound alone
    assert any(high <= 1.0 and low >= -1.0 for high, low in ranges), ranges  # and steps left unclipped
    clipped = [r["agm_clipped"] for r in trainer.history]
    assert sum(clipped) * trainer.state.steps_per_epoch == pytest.approx(
        sum(high > 1 or low < -1 for high, low in ranges))


def test_agm_clips_every_gradient_when_a_fusion_weight_gradient_leaves_the_unit_interval():
    trainer = Trainer(build_trial_config(tiny_config({"name": "agm"}, epochs=1)))
    params = list(trainer.model.parameters())
    for p in params:
        p.grad = torch.full_like(p, 0.5)
    trainer.balancer.after_backward(trainer.state)
    assert all(torch.equal(p.grad, torch.full_like(p, 0.5)) for p in params)  # inside [-1, 1]: untouched
    trainer.model.fusion.fc.weight.grad[0, 0] = -1.5
    trainer.balancer.after_backward(trainer.state)
    norm = torch.sqrt(sum((p.grad ** 2).sum() for p in params))
    assert float(norm) == pytest.approx(1.0, rel=1e-4)
