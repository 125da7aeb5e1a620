"""Benchmark mode's methods: each item of `methods:` resolved to a label, its base trial and its search space.

An item is a balancer name (`ogm_ge`) or a one-key mapping from a name to fixed fields
(`redreg: {variant: code}`; a key without a dot is a balancer field, `loss_setting` the method's loss setting, a
dotted key one of the method's search-space parameters or a shared knob such as `optim.lr`: data, model and batch
are the study's, the same for every method). The label is the name, with the fixed fields in brackets when there
are any (`redreg (variant=code)`). Each method searches the study's shared knobs (`shared_space`: a shared knob's
definition replaces the method's own) and `search_spaces/<name>.yaml`; a fixed field pins the parameter of the
same name. A method whose space then samples nothing (e.g. `none` with `optim.lr` fixed) is not searched: its
fixed configuration is trained once, with the confirmation seeds, and costs no tuning.

Joint training (`none`, nothing fixed but its loss setting) is the benchmark's reference: it is a method in every
loss setting (`none (loss_setting=multimodal)`, `none (loss_setting=multimodal+unimodal)`), tuned on the shared
knobs and confirmed like the others, so a balancer that adds unimodal losses meets joint training with them too.
A listed `none` is the joint baseline of its loss setting; the settings not listed are added. They come first.

No Ray here: the study config validates methods with this module before anything starts.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from search_spaces import SearchSpace, load_space, validate_space
from trainables.balancers.registry import balancer_names
from trainables.config import build_trial_config, deep_merge, flatten, unflatten
from trainables.errors import ConfigError

TRIAL_KEYS = ("loss_setting",)  # keys without a dot that are the trial's own, not the balancer's


@dataclass
class Method:
    """One benchmarked method: `point` (dotted keys) turns the study's base trial into the method's."""
    label: str
    name: str
    fixed: dict[str, Any] = field(default_factory=dict)  # dotted trial keys
    space: SearchSpace = field(default_factory=SearchSpace)
    replaced: list[str] = field(default_factory=list)  # own-space keys the shared knobs' definitions replaced

    @property
    def point(self) -> dict[str, Any]:
        return {"balancer.name": self.name, **self.fixed}

    @property
    def searched(self) -> bool:
        return bool(self.space.sampled_names())

    @property
    def joint_baseline(self) -> bool:
        """Joint training tuned like every method, in one loss setting: the benchmark's reference."""
        return self.name == "none" and set(self.fixed) <= set(TRIAL_KEYS)

    def base(self, study_base: dict[str, Any]) -> dict[str, Any]:
        return deep_merge(study_base, unflatten(self.point))


def with_shared(space: SearchSpace, shared: SearchSpace, fixed: dict[str, Any] | None = None
                ) -> tuple[SearchSpace, list[str]]:
    """`space` with the shared knobs first; a shared knob's definition replaces the space's own (those keys are
    returned, so the study can say so), and a fixed field pins either."""
    fixed = fixed or {}
    params = {k: p for k, p in shared.params.items() if k not in fixed}
    replaced = [k for k in space.params if k in shared.params and k not in fixed]
    params.update({k: p for k, p in space.params.items() if k not in shared.params and k not in fixed})
    return space.model_copy(update={"params": params}), replaced


def _qualify(key: str) -> str:
    return key if "." in key or key in TRIAL_KEYS else f"balancer.{key}"


def _value_text(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def parse_item(item: Any) -> tuple[str, dict[str, Any]]:
    """`name` or `{name: {field: value}}` -> (name, fixed fields as dotted keys)."""
    if isinstance(item, str):
        return item, {}
    if isinstance(item, dict) and len(item) == 1:
        (name, fixed), = item.items()
        if fixed is None:
            fixed = {}
        if not isinstance(name, str) or not isinstance(fixed, dict):
            raise ConfigError(f"methods: '{name}' needs a mapping of fixed fields (e.g. redreg: {{variant: code}})")
        return name, {_qualify(k): v for k, v in flatten(fixed).items()}
    raise ConfigError("methods: each item is a balancer name or a one-key mapping name -> fixed fields "
                      "(e.g. - redreg: {variant: code})")


def label_of(name: str, fixed: dict[str, Any]) -> str:
    shown = ", ".join(f"{k.removeprefix('balancer.')}={_value_text(v)}" for k, v in fixed.items())
    return f"{name} ({shown})" if shown else name


def resolve_methods(items: list[Any], study_base: dict[str, Any], shared: SearchSpace | None = None,
                    joint_settings: tuple[str, ...] | list[str] = ()) -> list[Method]:
    """Every method validated: a known balancer, a unique label, a valid trial, a space that fits it. With
    `joint_settings`, joint training in each of those loss settings is a method (listed or added), first."""
    if not items:
        raise ConfigError(f"methods: benchmark mode needs at least one method; allowed: {', '.join(balancer_names())}")
    shared = shared or SearchSpace()
    parsed = [parse_item(item) for item in items]
    if joint_settings:
        setting = study_base.get("loss_setting", joint_settings[0])
        parsed = [(name, {"loss_setting": setting, **fixed}) if name == "none" and set(fixed) <= set(TRIAL_KEYS)
                  else (name, fixed) for name, fixed in parsed]
        joint = [(name, fixed) for name, fixed in parsed if name == "none" and set(fixed) == {"loss_setting"}]
        listed = {fixed["loss_setting"] for _, fixed in joint}
        joint += [("none", {"loss_setting": s}) for s in joint_settings if s not in listed]
        order = list(joint_settings)
        joint.sort(key=lambda item: order.index(item[1]["loss_setting"]) if item[1]["loss_setting"] in order
                   else len(order))  # one listed twice stays twice: the label check below refuses it
        parsed = joint + [item for item in parsed if item not in joint]
    methods: list[Method] = []
    for name, fixed in parsed:
        if name not in balancer_names():
            raise ConfigError(f"methods: unknown method '{name}'; allowed: {', '.join(balancer_names())}")
        label = label_of(name, fixed)
        if any(m.label == label for m in methods):
            raise ConfigError(f"methods: '{label}' is listed twice; give each entry different fixed fields")
        method = Method(label, name, fixed)
        base = method.base(study_base)
        try:
            build_trial_config(base)
        except ConfigError as err:
            raise ConfigError(f"methods.{label}: {err}") from None
        space = load_space(name, field=f"methods.{label}")
        if space.balancer and space.balancer != name:
            raise ConfigError(f"methods.{label}: search space '{name}' is for balancer '{space.balancer}'")
        for key in fixed:  # data, model and batch stay the study's: every method is tested like joint training
            if not key.startswith("balancer.") and key not in TRIAL_KEYS and key not in space.params \
                    and key not in shared.params:
                allowed = ", ".join(["balancer.<field>", *TRIAL_KEYS, *shared.params,
                                     *(k for k in space.params if not k.startswith("balancer."))])
                raise ConfigError(f"methods.{label}: '{key}' cannot be fixed per method (the study's trial sets it "
                                  f"for all); allowed: {allowed}")
        # the shared knobs replace the method's own definition of the same key; a fixed field wins over both
        method.space, method.replaced = with_shared(space, shared, fixed)
        validate_space(method.space, base, field=f"methods.{label}")  # constraints see the fixed value
        methods.append(method)
    return methods

