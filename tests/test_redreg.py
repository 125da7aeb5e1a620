import math

import pytest
import torch

from conftest import small_overrides
from trainables.balancers.redreg import (co_information, corrected_gradient, gate_value, orthogonal_correction,
                                         redundancy_monitor, sliding_means, tau_schedule, adaptive_beta,
                                         modality_dropout_prob)
from trainables.metrics import growth_rate, redundancy_score, true_class_prob
from trainables.config import build_trial_config
from trainables.trainer import Trainer


def test_eq14_true_class_probability():
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])
    assert true_class_prob(logits, torch.tensor([0, 0])) == pytest.approx((0.5 + 0.75) / 2)


def test_eq15_16_sliding_means_and_growth_rate():
    assert sliding_means([1.0, 2.0, 3.0, 4.0], 2) == (3.5, 2.5)
    assert sliding_means([1.0], 2) is None
    assert growth_rate(0.6, 0.5) == pytest.approx(0.2)
    assert growth_rate(0.4, -0.5) == pytest.approx(1.8)  # |pbar_{t-1}| in the denominator


def test_eq20_redundancy_score_sum_and_mean():
    z1, z2 = torch.tensor([[1.0, 2.0]]), torch.zeros(1, 2)
    x1, x2 = torch.ones(1, 4), torch.zeros(1, 4)
    assert float(redundancy_score(z1, z2, x1, x2, eps=0.0)) == pytest.approx(5 / 4)
    assert float(redundancy_score(z1, z2, x1, x2, eps=0.0, reduce="mean")) == pytest.approx((5 / 2) / 1)


def test_eq21_monitor_ignores_negative_growth():
    assert redundancy_monitor(0.3, 0.2, 0.5) == pytest.approx(0.2)
    assert redundancy_monitor(0.3, -0.2, 0.5) == pytest.approx(0.3)


def test_eq23_co_information():
    a = torch.tensor([[1.0, 0.0], [2.0, 0.0]])
    v = torch.tensor([[3.0, 0.0], [0.0, 1.0]])
    assert co_information(a, v) == pytest.approx(0.5)


def test_eq24_tau_schedule_hits_its_ends():
    assert tau_schedule(0, 100, 0.2, 0.5) == pytest.approx(0.2)
    assert tau_schedule(100, 100, 0.2, 0.5) == pytest.approx(0.5)
    assert tau_schedule(50, 100, 0.2, 0.5) == pytest.approx(0.35)
    assert tau_schedule(0, 9, 0.2, 0.5) == 0.2 and tau_schedule(9, 9, 0.2, 0.5) == pytest.approx(0.5)


def test_eq25_gate_and_its_ablations():
    assert gate_value(True, 0.3, 0.15, 0.5, 0.4) == 1.0
    assert gate_value(False, 0.3, 0.15, 0.5, 0.4) == 0.0  # not the dominant modality
    assert gate_value(True, 0.1, 0.15, 0.5, 0.4) == 0.0  # below R
    assert gate_value(True, 0.3, 0.15, 0.3, 0.4) == 0.0  # not shared enough
    assert gate_value(True, 0.3, 0.15, 0.4, 0.4) == 1.0  # sim >= tau (paper)
    assert gate_value(True, 0.3, 0.15, 0.4, 0.4, strict_sim=True) == 0.0  # sim > tau (authors' code)
    assert gate_value(True, 0.1, 0.15, 0.5, 0.4, use_monitor=False) == 1.0
    assert gate_value(True, 0.3, 0.15, 0.3, 0.4, use_gate=False) == 1.0


def test_eq29_projection_by_hand():
    (d_perp,) = orthogonal_correction([torch.tensor([1.0, 1.0])], [torch.tensor([1.0, 0.0])], eps=0.0)
    assert d_perp.tolist() == [0.0, 1.0]


@pytest.mark.parametrize("per_tensor", [False, True])
def test_eq31_correction_is_orthogonal_to_the_task_gradient(per_tensor):
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        g = [torch.randn(5, 3, generator=gen, dtype=torch.float64), torch.randn(7, generator=gen, dtype=torch.float64)]
        d = [torch.randn(5, 3, generator=gen, dtype=torch.float64), torch.randn(7, generator=gen, dtype=torch.float64)]
        new = corrected_gradient(g, d, beta=0.9, gate=1.0, per_tensor=per_tensor)
        delta = [n - o for n, o in zip(new, g)]
        groups = [[0], [1]] if per_tensor else [[0, 1]]
        for idx in groups:
            dot = sum(float(torch.sum(delta[i] * g[i])) for i in idx)
            nd = math.sqrt(sum(float(delta[i].pow(2).sum()) for i in idx))
            ng = math.sqrt(sum(float(g[i].pow(2).sum()) for i in idx))
            assert abs(dot) <= 1e-6 * nd * ng
            assert nd > 0
        # Eq. 31: <g~, g> = ||g||^2
        assert sum(float((n * o).sum()) for n, o in zip(new, g)) == pytest.approx(sum(float(o.pow(2).sum()) for o in g))


def test_closed_gate_leaves_the_gradient_untouched():
    g = [torch.randn(4)]
    assert torch.equal(corrected_gradient(g, [torch.randn(4)], beta=0.9, gate=0.0)[0], g[0])


def test_code_variant_helpers():
    assert adaptive_beta(0.9, 0.7, 0.7) == pytest.approx(1.0)
    assert adaptive_beta(0.9, 1.0, 0.0) == pytest.approx(math.exp(0.9 * math.tanh(1.0)))
    assert modality_dropout_prob(0, 10, 0.6, 0.1, 0.3) == pytest.approx(0.6)
    assert modality_dropout_prob(3, 10, 0.6, 0.1, 0.3) == pytest.approx(0.1)
    assert modality_dropout_prob(9, 10, 0.6, 0.1, 0.3) == pytest.approx(0.1)
    assert modality_dropout_prob(1, 6, 0.6, 0.1, 0.3) == pytest.approx(0.1)  # the code's ramp: int(0.3 * 6) = 1 epoch


def _trainer(balancer, **extra):
    return Trainer(build_trial_config(small_overrides(balancer=balancer, **extra)))


def _params(t):
    return [p.detach().clone() for p in t.model.parameters()]


def test_with_the_gate_closed_redreg_trains_exactly_like_joint_training():
    joint = _trainer({"name": "none"})
    closed = _trainer({"name": "redreg", "R": 100.0})  # r_m never exceeds R
    joint.train_epoch()
    closed.train_epoch()
    assert closed.history[0]["gate_open_frac"] == 0.0
    for a, b in zip(_params(joint), _params(closed)):
        assert torch.equal(a, b)


def test_open_gate_changes_only_the_dominant_encoder_and_stays_orthogonal():
    t = _trainer({"name": "redreg", "monitor": "off", "gate": "off", "dominant": "audio", "warmup_steps": 0,
                  "anchor": "epoch_copy"})
    s = t.state
    with torch.no_grad():  # move the anchor away so d = w - w_anchor is not zero
        for a in t.balancer.anchor["audio"]:
            a.add_(0.1 * torch.randn_like(a))
    inputs, labels = next(iter(s.train_loader))
    s.inputs, s.labels = t._to_device(inputs), labels
    s.features = t.model.encode(s.inputs)
    s.fused_logits = t.model.fuse(s.features)
    s.unimodal_logits = t.model.unimodal_logits(s.features, detach_probe=True)
    loss = torch.nn.functional.cross_entropy(s.fused_logits, labels)
    t.optimizer.zero_grad()
    loss.backward()
    before = {m: [p.grad.clone() for p in t.model.encoder(m).parameters() if p.grad is not None] for m in t.modalities}
    t.balancer.after_backward(s)
    after = {m: [p.grad.clone() for p in t.model.encoder(m).parameters() if p.grad is not None] for m in t.modalities}
    assert all(torch.equal(x, y) for x, y in zip(before["visual"], after["visual"]))
    delta = [y - x for x, y in zip(before["audio"], after["audio"])]
    dot = sum(float((d * g).sum()) for d, g in zip(delta, before["audio"]))
    nd = math.sqrt(sum(float(d.pow(2).sum()) for d in delta))
    ng = math.sqrt(sum(float(g.pow(2).sum()) for g in before["audio"]))
    assert nd > 0 and abs(dot) <= 1e-5 * nd * ng
