import math

import pytest
import torch

from conftest import small_overrides
from trainables.balancers.base import State
from trainables.balancers.bmm import BalancedMultimodalMixup, BMMParams, imbalance_factor, mixing_degree
from trainables.balancers.cal import (confidence, contribution_weights, gaussian_kl, scale_gradient_of,
                                      shapley_two)
from trainables.balancers.inforeg import fisher_trace, regulation_strength, window_indicator
from trainables.balancers.mm import mix, mixup_targets
from trainables.balancers.ogm import modulated_params, ogm_coefficients
from trainables.config import build_trial_config
from trainables.trainer import Trainer


# ----------------------------------------------------------------------------- OGM / OGM-GE
def test_ogm_coefficient_formula_by_hand():
    coeff_a, coeff_v, ratio_v = ogm_coefficients(3.0, 1.0, 0.5)
    assert ratio_v == pytest.approx(1 / 3)
    assert coeff_a == pytest.approx(1 - math.tanh(0.5 * 3.0)) and coeff_v == 1.0
    coeff_a, coeff_v, _ = ogm_coefficients(1.0, 2.0, 0.1)
    assert coeff_a == 1.0 and coeff_v == pytest.approx(1 - math.tanh(0.2))


def test_ogm_scales_only_the_dominant_encoders_conv_weights():
    t = Trainer(build_trial_config(small_overrides(balancer={"name": "ogm", "alpha": 0.5})))
    s = t.state
    inputs, labels = next(iter(s.train_loader))
    s.inputs, s.labels = t._to_device(inputs), labels
    s.features = t.model.encode(s.inputs)
    s.fused_logits = t.model.fuse(s.features)
    s.unimodal_logits = t.model.unimodal_logits(s.features, detach_probe=True)
    t.optimizer.zero_grad()
    torch.nn.functional.cross_entropy(s.fused_logits, labels).backward()
    grads = {m: [p.grad.clone() for p in t.model.encoder(m).parameters()] for m in t.modalities}
    t.balancer.after_backward(s)
    m = t.balancer.avg.means()
    dom = "audio" if m["ogm_coeff_audio"] < 1 else "visual"
    other = "visual" if dom == "audio" else "audio"
    coeff = m[f"ogm_coeff_{dom}"]
    for p, g in zip(t.model.encoder(dom).parameters(), grads[dom]):
        assert torch.allclose(p.grad, g * (coeff if p.dim() >= 4 else 1.0), atol=1e-7)
    for p, g in zip(t.model.encoder(other).parameters(), grads[other]):
        assert torch.equal(p.grad, g)


# ----------------------------------------------------------------------------- MM / B-MM
def test_ogm_conv_only_falls_back_to_all_weights_for_encoders_without_convs():
    from trainables.data.base import ModalitySpec
    from trainables.models.encoders import build_encoder

    cnn = build_encoder(ModalitySpec("spectrogram", (1, 16, 16)), "small", 8)
    assert [p.dim() for p in modulated_params(cnn, conv_only=True)] == [4, 4, 4, 4]
    assert len(modulated_params(cnn, conv_only=False)) == len(list(cnn.parameters()))
    for enc in (build_encoder(ModalitySpec("vector", (5,)), "small", 8),
                build_encoder(ModalitySpec("sequence", (4, 5)), "small", 8)):
        assert modulated_params(enc, conv_only=True) == list(enc.parameters())


def test_three_modalities_error_lists_only_balancers_that_accept_them():
    from trainables.balancers.registry import build_balancer
    from trainables.errors import ConfigError

    three = ["text", "audio", "visual"]
    two_only = ("redreg", "ogm", "ogm_ge", "bmm", "inforeg", "cal")
    for name in two_only:
        with pytest.raises(ConfigError) as err:
            build_balancer(name, build_trial_config({"balancer": {"name": name}}).balancer_params(), three)
        message = str(err.value)
        assert "\n" not in message and "use one of: " in message, message
        offered = message.split("use one of: ")[1].split(", ")
        assert {"none", "mm"} <= set(offered) and not set(offered) & set(two_only), message
        for other in offered:  # each one offered really accepts three modalities
            build_balancer(other, build_trial_config({"balancer": {"name": other}}).balancer_params(), three)


def test_mixup_uses_the_same_lambda_and_permutation_for_inputs_and_labels():
    x, y, perm = torch.arange(4.0)[:, None], torch.tensor([0, 1, 2, 3]), torch.tensor([2, 3, 0, 1])
    assert mix(x, 0.25, perm).squeeze().tolist() == [1.5, 2.5, 0.5, 1.5]  # 0.25 x + 0.75 x[perm]
    (w1, y1), (w2, y2) = mixup_targets(y, 0.25, perm)
    assert (w1, w2) == (0.25, 0.75) and y1.tolist() == [0, 1, 2, 3] and y2.tolist() == [2, 3, 0, 1]


def test_bmm_imbalance_and_degree_by_hand():
    assert imbalance_factor(3.0, 1.5) == 2.0
    assert mixing_degree(2.0, 1.0) == pytest.approx(math.tanh(1.0))
    assert mixing_degree(0.5, 1.0) == pytest.approx(math.tanh(1.0))
    assert mixing_degree(1.0, 1.0) == 0.0
    assert mixing_degree(2.0, 1.0, "tanh_ratio") == pytest.approx(math.tanh(2.0))


def test_bmm_mixes_only_the_weak_modality_with_the_labels():
    bmm = BalancedMultimodalMixup(BMMParams(alpha=1.0, warmup_epochs=0), ["audio", "visual"])
    bmm.rho, bmm.delta = 2.0, 0.3  # audio strong -> mix visual
    y = torch.arange(6)
    feats = {"audio": torch.randn(6, 4), "visual": torch.randn(6, 4)}
    state = State(model=None, optimizer=None, modalities=["audio", "visual"], num_classes=6, num_epochs=1,
                  steps_per_epoch=1, loss_setting="multimodal", device=torch.device("cpu"), labels=y,
                  features=dict(feats))
    bmm.after_encode(state)
    (w1, y1), (w2, y2) = state.targets
    perm = y2  # labels are 0..5, so y[perm] is perm itself
    assert (w1, w2) == pytest.approx((0.7, 0.3)) and torch.equal(y1, y)
    assert torch.equal(state.features["audio"], feats["audio"])
    assert torch.allclose(state.features["visual"], 0.7 * feats["visual"] + 0.3 * feats["visual"][perm])
    assert state.unimodal_targets["audio"] == [(1.0, y)] and state.unimodal_targets["visual"] == state.targets


# ----------------------------------------------------------------------------- InfoReg
def test_inforeg_formulas_by_hand():
    # the authors' code: the history starts with 10 zeros, both sums divided by 10
    assert window_indicator([], 10) == 1.0  # epoch 0
    assert window_indicator([4.0], 10) == pytest.approx((0.4 - 0.0) / 0.4)
    assert window_indicator([4.0, 1.0], 10) == pytest.approx((0.5 - 0.4) / 0.5)  # newest share of the total: 1/5
    traces = [float(t) for t in range(11, 0, -1)]  # 11 falling traces: the zeros have left both windows
    tr1, tr2 = sum(traces[-10:]) / 10, sum(traces[-11:-1]) / 10
    assert window_indicator(traces, 10) == pytest.approx((tr1 - tr2) / tr1)
    # history=available: means over stored values; a falling trace closes the window at once
    assert window_indicator([1.0], 10, zeros=False) == 1.0
    assert window_indicator([4.0, 1.0], 10, zeros=False) == pytest.approx((2.5 - 4.0) / 2.5)
    assert regulation_strength(0.95, 3.0, 1.0) == pytest.approx(0.95 * math.exp(math.tanh(2.0)))
    w = torch.nn.Parameter(torch.zeros(2, 2))
    w.grad = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    b = torch.nn.Parameter(torch.zeros(2))
    b.grad = torch.tensor([5.0, 5.0])  # biases are not in the trace
    assert fisher_trace([w, b]) == pytest.approx((1 + 4 + 9 + 16) / 4)


def test_inforeg_window_stays_open_while_the_trace_share_exceeds_the_threshold():
    traces = [1.0 / (e + 1) for e in range(12)]  # a falling Fisher trace (harmonic)
    open_epochs = [e for e in range(13) if window_indicator(traces[:e], 10) > 0.04]
    closed_available = [e for e in range(13) if window_indicator(traces[:e], 10, zeros=False) <= 0.04]
    assert open_epochs == list(range(9))  # the zeros keep it open 9 epochs (k = newest share of the total)
    assert closed_available[0] == 2  # without them it closes at epoch 2


# ----------------------------------------------------------------------------- CAL (a reading)
def test_cal_shapley_confidence_and_weights_by_hand():
    i_a, i_v = shapley_two(0.0, 2.0, 1.0, 4.0)
    assert (i_a, i_v) == (2.5, 1.5) and i_a + i_v == 4.0  # efficiency: sums to v(both) - v(none)
    assert confidence(torch.zeros(3, 4), 0.3) == pytest.approx(1.0)  # uniform: entropy 1
    assert confidence(torch.tensor([[100.0, 0, 0, 0]]), 0.3) == pytest.approx(1 / 0.3)  # clamped
    w = contribution_weights([2.5, 1.5], [1.0, 1.0], 1.0)
    assert sum(w) == pytest.approx(1.0)
    assert w[0] == pytest.approx(1 / (1 + math.exp(-(0.3125 - 0.1875))))
    for info, conf in (([-1.0, 3.0], [2.0, 0.5]), ([0.0, 0.0], [1.0, 1.0])):
        assert sum(contribution_weights(info, conf, 5.0)) == pytest.approx(1.0)


def test_cal_kl_and_gradient_scaling():
    assert float(gaussian_kl(torch.zeros(3, 2), torch.zeros(3, 2))) == 0.0
    assert float(gaussian_kl(torch.ones(1, 2), torch.zeros(1, 2))) == pytest.approx(1.0)
    x = torch.ones(3, requires_grad=True)
    z = 2 * x
    scale_gradient_of(z, 1.5)  # every use of z below is scaled: d/dx [sum z + sum z^2] = 2 (1 + 2z) -> x 1.5
    (z.sum() + z.pow(2).sum()).backward()
    assert torch.equal(z, 2 * x) and x.grad.tolist() == [15.0, 15.0, 15.0]
