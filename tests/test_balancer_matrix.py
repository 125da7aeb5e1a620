"""Every balancer runs with every fusion and both loss settings, records its dynamics, and two-modality
methods refuse other modality counts with a clear error."""
import math
import textwrap

import pytest
import torch
from pydantic import BaseModel, ConfigDict

from trainables.balancers.registry import balancer_names
from trainables.config import build_trial_config
from trainables.errors import ConfigError
from trainables.data.base import DatasetBundle, ModalitySpec, MultimodalTensorDataset
from trainables.data.registry import registered_dataset
from trainables.trainer import Trainer

FUSIONS = ["concat", "sum", "film", "gated", "late"]
SETTINGS = ["multimodal", "multimodal+unimodal"]
DYNAMICS = {
    "redreg": ["gate_open_frac", "dominant", "redreg_dgr_audio", "redreg_dgr_visual"],
    "ogm": ["ogm_ratio", "ogm_coeff_audio", "ogm_coeff_visual"],
    "ogm_ge": ["ogm_ratio", "ogm_coeff_audio", "ogm_coeff_visual"],
    "bmm": ["bmm_imbalance", "bmm_degree"],
    "cal": ["cal_w_audio", "cal_w_visual"],
    "reconboost": ["reconboost_turn_audio", "reconboost_turn_visual", "reconboost_boost_rate"],
    "mla": ["mla_weight_audio", "mla_weight_visual", "mla_grad_ratio_audio", "mla_loss_visual"],
    "ume": ["ume_loss_audio", "ume_loss_visual"],
    "umt": ["umt_distilling", "umt_distill_audio", "umt_distill_visual"],  # epoch 2 of 2: distillation
}
# fusions a balancer refuses with a one-line error (ReconBoost's learners are the fused head's per-modality blocks)
REFUSED_FUSIONS = {"reconboost": ("film", "gated")}


def _raw(balancer, fusion, setting, epochs=2):
    params = {"name": balancer}
    if balancer in ("bmm", "cal"):
        params["warmup_epochs"] = 1
    return {"epochs": epochs, "loss_setting": setting, "model": {"fusion": fusion, "feature_dim": 8},
            "dataset": {"name": "synthetic", "n_train": 48, "n_val": 16, "n_test": 16},
            "optim": {"batch_size": 16}, "balancer": params}


@pytest.mark.parametrize("setting", SETTINGS)
@pytest.mark.parametrize("fusion", FUSIONS)
@pytest.mark.parametrize("balancer", balancer_names())
def test_every_balancer_fusion_and_loss_setting(balancer, fusion, setting):
    if fusion in REFUSED_FUSIONS.get(balancer, ()):
        with pytest.raises(ConfigError, match="^model.fusion: "):
            Trainer(build_trial_config(_raw(balancer, fusion, setting)))
        return
    result = Trainer(build_trial_config(_raw(balancer, fusion, setting))).fit()
    last = result["history"][-1]
    assert math.isfinite(last["train_loss"])
    for m in ("audio", "visual"):
        assert f"rlc_{m}" in last and f"dgr_{m}" in last and f"rs_{m}" in last
    for key in DYNAMICS.get(balancer, []):
        assert key in last, f"{balancer} did not record {key}"


class ThreeVectorsParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _three_vectors(_params) -> DatasetBundle:
    gen = torch.Generator().manual_seed(0)
    def split(n):
        return MultimodalTensorDataset({m: torch.randn(n, 5, generator=gen) for m in ("text", "audio", "visual")},
                                       torch.randint(3, (n,), generator=gen))
    specs = {m: ModalitySpec("vector", (5,)) for m in ("text", "audio", "visual")}
    return DatasetBundle("three_vectors", specs, 3, split(32), split(16), split(16))


@pytest.fixture(autouse=True, scope="module")
def _three_vectors_dataset():
    with registered_dataset("three_vectors", ThreeVectorsParams, _three_vectors):  # only while this file's tests run
        yield


@pytest.mark.parametrize("balancer", ["redreg", "ogm", "ogm_ge", "bmm", "inforeg", "cal"])
def test_two_modality_methods_refuse_three_modalities(balancer):
    raw = {"dataset": {"name": "three_vectors"}, "balancer": {"name": balancer}, "epochs": 1}
    with pytest.raises(ConfigError, match=f"'{balancer}' is defined for exactly 2 modalities"):
        Trainer(build_trial_config(raw))


@pytest.mark.parametrize("balancer", ["none", "mm", "ume", "umt"])
def test_general_methods_train_on_three_modalities(balancer):
    raw = {"dataset": {"name": "three_vectors"}, "balancer": {"name": balancer},
           "epochs": 2 if balancer == "umt" else 1,  # UMT: a teacher epoch, then a distillation epoch
           "optim": {"batch_size": 8}}
    result = Trainer(build_trial_config(raw)).fit()
    assert {"test_acc_text", "test_acc_audio", "test_acc_visual"} <= set(result["best"])


def test_a_researchers_own_balancer_plugs_in_by_import_path(tmp_path, monkeypatch):
    (tmp_path / "mylab_balancers.py").write_text(textwrap.dedent('''
        from pydantic import BaseModel, ConfigDict
        from trainables.balancers.base import Balancer

        class FreezeVisualParams(BaseModel):
            model_config = ConfigDict(extra="forbid")
            factor: float = 0.0

        class FreezeVisual(Balancer):
            """Scales the visual encoder's gradient by `factor`."""
            name = "freeze_visual"
            Params = FreezeVisualParams

            def after_backward(self, state):
                for p in state.model.encoder("visual").parameters():
                    if p.grad is not None:
                        p.grad.mul_(self.p.factor)

            def epoch_metrics(self):
                return {"freeze_factor": self.p.factor}
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    raw = _raw("mylab_balancers:FreezeVisual", "concat", "multimodal", epochs=1)
    raw["balancer"]["factor"] = 0.0
    t = Trainer(build_trial_config(raw))
    before = [p.detach().clone() for p in t.model.encoder("visual").parameters()]
    t.model.encoder("visual").eval()  # keep BN running stats fixed so only gradients could move it
    t.train_epoch()
    assert t.history[0]["freeze_factor"] == 0.0
    # weight decay still acts, but no gradient step: parameters only shrink by (1 - lr*wd)^k
    for p, b in zip(t.model.encoder("visual").parameters(), before):
        assert torch.allclose(p.detach(), b, rtol=0.05, atol=1e-3)
    with pytest.raises(ConfigError, match="cannot import 'nowhere.mod:X'"):
        build_trial_config({"balancer": {"name": "nowhere.mod:X"}})
