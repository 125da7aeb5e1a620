"""ARL through the real Trainer vs. the plain loop written from the authors' code (tests/reference/arl.py)."""
import math

import pytest

from golden import run_golden, tiny_config, vector_pair_config, vector_pair_dataset
from reference import arl as reference
from trainables.balancers.arl import arl_weights


@pytest.fixture(autouse=True, scope="module")
def _vector_pair():
    with vector_pair_dataset():  # only while this file's tests run
        yield


@pytest.mark.parametrize("variant,fusion,setting", [("paper", "concat", "multimodal"),
                                                    ("code", "late", "multimodal+unimodal")])
def test_arl_matches_the_authors_loop(variant, fusion, setting):
    params = {"gamma": 2.0, "temperature": 4.0, "start": 1, "clip_norm": 0.5}
    raw = tiny_config({"name": "arl", "variant": variant, **params}, epochs=5,
                      model={"feature_dim": 16, "fusion": fusion}, loss_setting=setting)
    trainer, _ = run_golden(raw, reference.train, apply_weights=variant == "paper", **params)
    h = trainer.history
    assert [r["arl_active"] for r in h] == [0.0, 0.0, 1.0, 1.0, 1.0]  # epochs > start
    assert [r["arl_uni_weight"] for r in h] == [1.0, 1.0, 2.0, 2.0, 2.0]
    scales = [r["arl_scale_audio"] for r in h]
    if variant == "paper":
        assert scales[:2] == [1.0, 1.0] and all(s != 1.5 for s in scales[3:])  # weights applied, a step late
    else:
        assert scales == [1.0, 1.0, 1.5, 1.5, 1.5]  # the released code: 0.5 forever



@pytest.mark.parametrize("leader", ["visual", "audio"])
def test_arl_with_an_entropy_floor_binding_matches_the_authors_loop(leader):
    """One modality carries the class (signal 3, the other 0.5) on vector encoders: its masked logits grow
    confident within a few steps, its entropy share falls under the 0.3 floor, and the clamped share sets the
    next step's weights -- so a floor dropped, moved or applied to the wrong modality shows."""
    params = {"gamma": 2.0, "temperature": 4.0, "start": 1, "clip_norm": 0.5}
    signals = {f"{m}_signal": 3.0 if m == leader else 0.5 for m in ("audio", "visual")}
    raw = vector_pair_config({"name": "arl", **params}, lr=0.2, **signals)
    trainer, ref = run_golden(raw, reference.train, **params)
    shares = [(e, {"audio": h_a, "visual": h_v}) for e, h_a, h_v in ref.entropy_shares]
    # the weights a step computes are used by the next one: the last step's never are
    used = [share[leader] for e, share in shares[:-1] if e > params["start"]]
    assert sum(h < 0.3 for h in used) >= 2, used
    lagging = "audio" if leader == "visual" else "visual"
    assert all(share[lagging] > 0.3 for _, share in shares)  # only the leader's floor binds here
    w = [r[f"arl_w_{leader}"] for r in trainer.history]
    assert w[:2] == [0.5, 0.5] and w[-1] < 0.5  # the confident modality gets the smaller boost

def test_arl_weights_by_hand_with_the_entropy_floor_binding():
    # importance shares (0.25, 0.75); entropy shares (0.1 -> floor 0.3, 0.9): confidences 1/0.3, 1/0.9 -> (0.75, 0.25)
    # crossed: T * [I_v * D_a, I_a * D_v] = 2 * [0.5625, 0.0625] -> softmax
    w_a, w_v = arl_weights((1.0, 3.0), (0.1, 0.9), temperature=2.0)
    assert w_a == pytest.approx(1 / (1 + math.exp(-1.0)), rel=1e-6) and w_a + w_v == pytest.approx(1.0)
