"""RedReg through the real Trainer vs plain loops (tests/reference/redreg.py): the paper variant against a
loop written from the paper, the code variant against one written from the authors' main_RedReg.py."""
import pytest

from golden import run_golden, tiny_config
from reference import redreg


def test_redreg_paper_matches_the_reference_with_the_gate_open_and_closed():
    # gamma large: the monitor stays closed while p grows fast (early), opens once growth slows; L = 3 so the
    # sliding window's warm-up (fewer than L values) is part of the run; R = 0 on red ~ 1e-3.
    params = {"gamma": 50.0, "beta": 0.9, "R": 0.0, "tau_min": 0.05, "tau_max": 0.9, "window": 3}
    log = []
    trainer, _ = run_golden(tiny_config({"name": "redreg", **params}, epochs=6), redreg.train,
                            gamma=50.0, beta=0.9, R=0.0, tau_min=0.05, tau_max=0.9, window=3, log=log)
    gates = [e["gate"] for e in log]
    assert any(gates) and not all(gates), gates
    assert any(e["r"] <= 0.0 for e in log) and any(e["sim"] < e["tau"] for e in log), log  # both gates closed once
    assert len(log) == trainer.state.step - 2  # the first two steps are plain (Algorithm 1, t < 2)
    for e, record in enumerate(trainer.history):  # the monitor's values, not only the weights they led to
        rs = [x["r"] for x in log if x["step"] // trainer.state.steps_per_epoch == e]
        assert record["redreg_r"] == pytest.approx(sum(rs) / len(rs), rel=1e-5)


def test_redreg_code_variant_matches_the_authors_loop():
    # The code's defaults except R (4.5: r ranges ~3-9.4 here, so the monitor closes late in each epoch),
    # tau_max (0.9: the agreement gate closes once features decorrelate) and L = 2 (so each epoch's fresh
    # history is in warm-up for two steps, then measured). 6 epochs: dropout ramps over int(0.3 * 6) = 1.
    log = []
    raw = tiny_config({"name": "redreg", "variant": "code", "window": 2, "R": 4.5, "tau_max": 0.9}, epochs=6,
                      loss_setting="multimodal+unimodal")
    trainer, _ = run_golden(raw, redreg.train_code, W=2, R=4.5, thr_max=0.9, log=log)
    regulated = [m for e in log for m, b in e["beta"].items() if b > 0]
    dominant_r = [e["r"][max(e["prob"], key=e["prob"].get)] for e in log]
    assert {"audio", "visual"} <= set(regulated), "both modalities were regulated at some step"
    assert any(e["sim"] <= e["thr"] for e in log), "the agreement gate closed at some step"
    assert min(dominant_r) <= 4.5 and len(regulated) < len(log), "the monitor closed at some step"
    assert {m for e in log for m in e["dropped"]} == {"audio", "visual"}, "modality dropout hit both"
    for e, record in enumerate(trainer.history):  # the monitor's values, not only the weights they led to
        rs = [x["r"][max(x["prob"], key=x["prob"].get)] for x in log if x["epoch"] == e]
        assert record["redreg_r"] == pytest.approx(sum(rs) / len(rs), rel=1e-5)
