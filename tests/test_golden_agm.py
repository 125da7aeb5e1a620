"""AGM through the real Trainer vs. the plain loop written from the authors' code (tests/reference/agm.py)."""
import pytest
import torch

from golden import run_golden, tiny_config
from reference import agm as reference
from trainables.config import build_trial_config
from trainables.trainer import Trainer


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
