"""Benchmark mode's methods: each item of `methods:` resolved to a label, its base trial and its search space.

An item is a balancer name (`ogm_ge`) or a one-key mapping from a name to fixed fields
(`redreg: {variant: code}`; a key without a dot is a balancer field, a dotted key one of the method's
search-space parameters such as `optim.lr`: data, model and batch are the study's, the same for every method). The label is the name, with the fixed fields in brackets when there are any
(`redreg (variant=code)`). Each method searches `search_spaces/<name>.yaml`; a fixed field pins the space's
parameter of the same name. A method whose space then samples nothing (e.g. `none` with `optim.lr` fixed)
is not searched: its fixed configuration is trained once, with the confirmation seeds, and costs no tuning.

No Ray here: the study config validates methods with this module before anything starts.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from search_spaces import SearchSpace, load_space, validate_space
from trainables.balancers.registry import balancer_names
from trainables.config import build_trial_config, deep_merge, flatten, unflatten
from trainables.errors import ConfigError


@dataclass
class Method:
    """One benchmarked method: `point` (dotted keys) turns the study's base trial into the method's."""
    label: str
    name: str
    fixed: dict[str, Any] = field(default_factory=dict)  # dotted trial keys
    space: SearchSpace = field(default_factory=SearchSpace)

    @property
    def point(self) -> dict[str, Any]:
        return {"balancer.name": self.name, **self.fixed}

    @property
    def searched(self) -> bool:
        return bool(self.space.sampled_names())

    def base(self, study_base: dict[str, Any]) -> dict[str, Any]:
        return deep_merge(study_base, unflatten(self.point))


def _qualify(key: str) -> str:
    return key if "." in key else f"balancer.{key}"


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


def resolve_methods(items: list[Any], study_base: dict[str, Any]) -> list[Method]:
    """Every method validated: a known balancer, a unique label, a valid trial, a space that fits it."""
    if not items:
        raise ConfigError(f"methods: benchmark mode needs at least one method; allowed: {', '.join(balancer_names())}")
    methods: list[Method] = []
    for item in items:
        name, fixed = parse_item(item)
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
            if not key.startswith("balancer.") and key not in space.params:
                allowed = ", ".join(["balancer.<field>", *(k for k in space.params if not k.startswith("balancer."))])
                raise ConfigError(f"methods.{label}: '{key}' cannot be fixed per method (the study's trial sets it "
                                  f"for all); allowed: {allowed}")
        pinned = {k: p for k, p in space.params.items() if k not in fixed}  # a fixed field wins over the space
        method.space = space.model_copy(update={"params": pinned})  # constraints see the fixed value
        validate_space(method.space, base, field=f"methods.{label}")
        methods.append(method)
    return methods
