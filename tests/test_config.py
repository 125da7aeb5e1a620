import pytest

from trainables.config import build_trial_config, parse_overrides
from trainables.errors import ConfigError


def test_overrides_are_typed_and_nested():
    assert parse_overrides(["optim.lr=0.01", "model.fusion=film", "epochs=3", "x.flag=true"]) == {
        "optim": {"lr": 0.01}, "model": {"fusion": "film"}, "epochs": 3, "x": {"flag": True}}


def test_defaults_resolve_every_plugin_param():
    cfg = build_trial_config({}, ["balancer.name=redreg"])
    params = cfg.to_dict()["balancer"]
    assert params["gamma"] == 0.5 and params["beta"] == 0.9 and params["R"] == 0.15
    assert params["tau_min"] == 0.2 and params["tau_max"] == 0.5
    assert cfg.to_dict()["dataset"]["size"] == "tiny"


def test_code_variant_switches_defaults_but_explicit_values_win():
    cfg = build_trial_config({"balancer": {"name": "redreg", "variant": "code", "beta_mode": "fixed"}})
    p = cfg.to_dict()["balancer"]
    assert p["gamma"] == 0.6 and p["anchor"] == "epoch_copy" and p["rs_normalise"] == "ema"
    assert p["beta_mode"] == "fixed"


@pytest.mark.parametrize("overrides, expected", [
    (["model.fusoin=film"], "model.fusoin: unknown key; did you mean 'model.fusion'?"),
    (["model.fusion=transformer"], "model.fusion: Input should be 'concat', 'sum', 'film', 'gated' or 'late'"),
    (["balancer.name=redregg"], "balancer.name: unknown balancer 'redregg'; allowed: bmm, cal, inforeg, mm, none"),
    (["dataset.name=imagenet"], "dataset.name: unknown dataset 'imagenet'; allowed: cmu_mosi, crema_d, kinetics_sounds, synthetic"),
    (["optim.lr=fast"], "optim.lr: Input should be a valid number"),
    (["optim.lr=-1"], "optim.lr: Input should be greater than 0"),
    (["balancer.name=redreg", "balancer.tau_min=0.6"], "balancer: tau_min (0.6) must be < tau_max (0.5)"),
    (["balancer.name=redreg", "balancer.gama=1"], "balancer.gama: unknown key; did you mean 'balancer.gamma'?"),
    (["balancer.name=redreg", "balancer.gamma=-1"], "balancer.gamma: Input should be greater than or equal to 0"),
    (["model.unimodal_head=fused_block", "model.fusion=film"], "model.unimodal_head: 'fused_block' needs"),
    (["epochs"], "override 'epochs': expected key=value"),
])
def test_bad_input_is_one_line_naming_the_field(overrides, expected):
    with pytest.raises(ConfigError) as err:
        build_trial_config({}, overrides)
    message = str(err.value)
    assert expected in message, message
    assert "\n" not in message
