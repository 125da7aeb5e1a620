"""Declarative search spaces: ranges, log scales, fixed and conditional parameters, and constraints.

A space is YAML (one file per balancer here, or inline in a study config). Keys are dotted trial-config
paths; a key without a dot means `balancer.<key>`. Constraints `a < b` are enforced while sampling
(Optuna define-by-run narrows each bound), so no sampled trial violates them, and a space that cannot
be satisfied is rejected before a study starts.
"""
from __future__ import annotations

import itertools
import math
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from trainables.errors import ConfigError
from trainables.config import (build_trial_config, deep_merge, format_validation_error, read_yaml,
                               unflatten)

SPACES_DIR = Path(__file__).parent


class ParamSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # a bound or step of inf or NaN is an error
    type: Literal["float", "int", "categorical", "fixed"] = "float"
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: list[Any] | None = None
    value: Any = None
    when: dict[str, Any] | None = Field(None, description="sample only when these params take these values")
    grid: list[Any] | None = Field(None, description="values for sensitivity sweeps and the grid searcher")

    @model_validator(mode="after")
    def _check(self) -> "ParamSpec":
        """What Optuna would otherwise refuse in the middle of a study, refused before it starts."""
        if self.type in ("float", "int"):
            if self.low is None or self.high is None:
                raise ValueError(f"type {self.type} needs low and high")
            if not self.low < self.high:
                raise ValueError(f"empty range: low ({self.low}) must be < high ({self.high})")
            if self.log and self.low <= 0:
                raise ValueError(f"log scale needs low > 0 (got {self.low})")
            if self.step is not None and not self.step > 0:
                raise ValueError(f"step must be > 0 (got {self.step})")
        if self.type == "float" and self.log and self.step is not None:
            raise ValueError("a log scale takes no step (allowed: log or step)")
        if self.type == "int":
            if self.step is not None and self.step != int(self.step):
                raise ValueError(f"an int parameter's step is a whole number (got {self.step})")
            if self.log and self.step not in (None, 1):
                raise ValueError(f"an int log scale takes step 1 (got {self.step})")
            if math.ceil(self.low) > math.floor(self.high):
                raise ValueError(f"no integer between low ({self.low}) and high ({self.high})")
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("categorical needs a non-empty list of choices")
            odd = [c for c in self.choices if not isinstance(c, (str, int, float, bool, type(None)))]
            if odd:
                raise ValueError(f"categorical choices are single values (allowed: strings, numbers, booleans, "
                                 f"null; got {odd[0]!r})")
        return self

    def grid_values(self) -> list[Any]:
        if self.grid is not None:
            return list(self.grid)
        if self.type == "categorical":
            return list(self.choices or [])
        if self.type == "fixed":
            return [self.value]
        return []


class SearchSpace(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    balancer: str | None = None
    description: str = ""
    params: dict[str, ParamSpec] = Field(default_factory=dict)
    constraints: list[str] = Field(default_factory=list)
    constraint_gap: float = Field(1e-3, ge=0, description="minimum distance enforced by 'a < b'")

    @model_validator(mode="before")
    @classmethod
    def _qualify_keys(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("params"), dict):
            data = dict(data, params={_qualify(str(k)): v for k, v in data["params"].items()})
        if isinstance(data, dict) and isinstance(data.get("constraints"), list):
            data = dict(data, constraints=[_qualify_constraint(c) for c in data["constraints"]])
        return data

    def parsed_constraints(self) -> list[tuple[str, str]]:
        return [tuple(c.split(" < ")) for c in self.constraints]  # type: ignore[misc]

    def sampled_names(self) -> list[str]:
        return [k for k, p in self.params.items() if p.type != "fixed"]


def _qualify(key: str) -> str:
    return key if "." in key or key in ("seed", "epochs", "loss_setting") else f"balancer.{key}"


def _qualify_constraint(text: str) -> str:
    match = re.fullmatch(r"\s*([\w.]+)\s*<\s*([\w.]+)\s*", str(text))
    if match is None:
        raise ValueError(f"constraint '{text}': expected 'a < b'")
    return f"{_qualify(match.group(1))} < {_qualify(match.group(2))}"


# ----------------------------------------------------------------------------- loading


def available_spaces() -> list[str]:
    return sorted(p.stem for p in SPACES_DIR.glob("*.yaml"))


def load_space(spec: str | dict | None, field: str = "search_space") -> SearchSpace:
    """A space from a name in search_spaces/ ('redreg'), a YAML path, or an inline mapping."""
    if spec is None:
        return SearchSpace()
    if isinstance(spec, str):
        path = Path(spec)
        if not path.suffix:
            path = SPACES_DIR / f"{spec}.yaml"
        try:
            found = path.is_file()
        except OSError:  # e.g. a name too long for the file system
            found = False
        if not found:
            raise ConfigError(f"{field}: no space '{spec[:200]}'; allowed: {', '.join(available_spaces())} or a YAML "
                              "path")
        spec = read_yaml(path, field)
    if not isinstance(spec, dict):
        raise ConfigError(f"{field}: expected a mapping with 'params'")
    try:
        return SearchSpace.model_validate(spec)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, prefix=field, model=SearchSpace)) from None


# ----------------------------------------------------------------------------- validation


def base_value(base: dict[str, Any], key: str) -> Any:
    """A parameter's value in the resolved base trial config (its default when not swept)."""
    node: Any = build_trial_config(base).to_dict()
    for part in key.split("."):
        node = node[part]
    return node


def validate_space(space: SearchSpace, base: dict[str, Any], field: str = "search_space") -> None:
    """Reject, before any trial runs, a space whose bounds are invalid for the trial config, whose constraints
    compare what is not a number or cannot be met, or whose conditional parameter can never be sampled."""
    ranges = {key: _numeric_range(space, base, key, field) for c in space.parsed_constraints() for key in c}
    for key, p in space.params.items():
        _check_condition(space, key, p, field)
        probes = ([p.low, p.high] if p.type in ("float", "int") else [])
        probes += (p.choices or []) + ([p.value] if p.type == "fixed" else []) + (p.grid or [])
        for value in probes:
            if p.type == "int" and value is not None:
                value = int(value)
            point = {key: value}
            for a, b in space.parsed_constraints():  # probe with a partner that meets the constraint
                if key == a and isinstance(value, (int, float)):
                    point[b] = max(ranges[b][1], value + space.constraint_gap)
                if key == b and isinstance(value, (int, float)):
                    point[a] = min(ranges[a][0], value - space.constraint_gap)
            try:
                build_trial_config(base, unflatten(point))
            except ConfigError as err:
                raise ConfigError(f"{field}.params.{key}: value {value!r} is invalid for the trial ({err})") from None
    for a, b in space.parsed_constraints():
        lo_a, hi_b = ranges[a][0], ranges[b][1]
        if not lo_a + space.constraint_gap < hi_b:
            raise ConfigError(f"{field}.constraints: '{a} < {b}' cannot be met: {a} is at least {lo_a} and "
                              f"{b} at most {hi_b}")


def _numeric_range(space: SearchSpace, base: dict[str, Any], key: str, field: str) -> tuple[float, float]:
    """(lowest, highest) value of one side of a constraint: a parameter of the space or a trial field, numeric."""
    p = space.params.get(key)
    if p is None:
        try:
            values = [base_value(base, key)]
        except (KeyError, TypeError):
            raise ConfigError(f"{field}.constraints: '{key}' is neither a parameter of the space nor a trial "
                              f"field") from None
    else:
        values = {"float": [p.low, p.high], "int": [p.low, p.high], "fixed": [p.value]}.get(p.type, p.choices)
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise ConfigError(f"{field}.constraints: '{key}' takes {values!r}; a constraint 'a < b' compares numbers")
    return float(min(values)), float(max(values))


def _check_condition(space: SearchSpace, key: str, p: ParamSpec, field: str) -> None:
    """`when: {param: value}`: a parameter of the space sampled before this one, with that value among its own."""
    order = _ordered(space)
    for name, wanted in (p.when or {}).items():
        other = _qualify(str(name))
        q = space.params.get(other)
        if other == "loss_setting" and q is None:
            continue  # the study's loss settings (a study-level choice, sampled first)
        if q is None or other == key:
            raise ConfigError(f"{field}.params.{key}.when: '{name}' is not another parameter of the space "
                              f"(allowed: {', '.join(k for k in space.params if k != key) or 'none'})")
        if order.index(other) > order.index(key):
            raise ConfigError(f"{field}.params.{key}.when: declare '{other}' before '{key}' (a condition is sampled "
                              "first)")
        possible = q.choices if q.type == "categorical" else [q.value] if q.type == "fixed" else None
        if possible is not None and wanted not in possible:
            raise ConfigError(f"{field}.params.{key}.when: {other} never takes {wanted!r} (allowed: {possible})")


def satisfies(point: dict[str, Any], space: SearchSpace, base: dict[str, Any]) -> bool:
    for a, b in space.parsed_constraints():
        va = point.get(a, None)
        vb = point.get(b, None)
        va = base_value(base, a) if va is None else va
        vb = base_value(base, b) if vb is None else vb
        if not va < vb:
            return False
    return True


# ----------------------------------------------------------------------------- sampling


def _ordered(space: SearchSpace) -> list[str]:
    """Declared order, except that the left side of each 'a < b' comes before its right side."""
    order = list(space.params)
    for a, b in space.parsed_constraints():
        if a in order and b in order and order.index(a) > order.index(b):
            order.remove(a)
            order.insert(order.index(b), a)
    return order


class DefineByRun:
    """An Optuna define-by-run space (a picklable callable, so Tune can checkpoint the searcher):
    samples each parameter with constraint-narrowed bounds and returns fixed parameters as constants.
    `categoricals` adds study-level choices (e.g. the loss setting) before the space's own parameters."""

    def __init__(self, space: SearchSpace, base: dict[str, Any], categoricals: dict[str, list[Any]] | None = None):
        self.space, self.categoricals = space, dict(categoricals or {})
        self.constraints = space.parsed_constraints()
        self.defaults = {a: base_value(base, a) for c in self.constraints for a in c if a not in space.params}

    def __call__(self, trial) -> dict[str, Any]:
        space, gap = self.space, self.space.constraint_gap
        values: dict[str, Any] = {}
        constants: dict[str, Any] = {}
        for key, choices in self.categoricals.items():
            values[key] = trial.suggest_categorical(key, choices)
        for key in _ordered(space):
            p = space.params[key]
            if p.when and any(values.get(_qualify(k), constants.get(_qualify(k))) != v for k, v in p.when.items()):
                continue
            if p.type == "fixed":
                constants[key] = p.value
                continue
            if p.type == "categorical":
                values[key] = trial.suggest_categorical(key, p.choices)
                continue
            low, high = float(p.low), float(p.high)
            for a, b in self.constraints:
                if b == key:  # key must exceed a
                    low = max(low, float(values.get(a, constants.get(a, self.defaults.get(a, low)))) + gap)
                if a == key:  # key must stay below b
                    other = space.params.get(b)
                    top = other.high if other is not None and other.type != "fixed" else (
                        other.value if other is not None else self.defaults[b])
                    high = min(high, float(top) - gap)
            if p.type == "int":
                values[key] = trial.suggest_int(key, math.ceil(low), math.floor(high), log=p.log,
                                                step=int(p.step or 1))
            else:
                values[key] = trial.suggest_float(key, low, high, log=p.log, step=p.step)
        return constants


def define_by_run(space: SearchSpace, base: dict[str, Any], categoricals: dict[str, list[Any]] | None = None):
    return DefineByRun(space, base, categoricals)


def stratified_points(space: SearchSpace, n: int, seed: int = 0) -> list[dict[str, Any]]:
    """n points of the space's sampled parameters (conditional ones left to the sampler), one per stratum of each
    parameter's range, at the stratum's centre (a centred Latin hypercube, scipy.stats.qmc; log ranges split in
    log space, steps rounded, ints and categoricals split into equal shares of their values): a few random
    start-up draws of a learning rate can all land in one corner of a two-decade range, these span it."""
    from scipy.stats import qmc

    keys = [k for k, p in space.params.items() if p.type != "fixed" and not p.when]
    if n < 1 or not keys:
        return []
    unit = qmc.LatinHypercube(d=len(keys), scramble=False, seed=seed).random(n)
    points = []
    for row in unit:
        point = {}
        for key, u in zip(keys, map(float, row)):
            p = space.params[key]
            if p.type == "categorical":
                point[key] = p.choices[min(int(u * len(p.choices)), len(p.choices) - 1)]
                continue
            low, high = float(p.low), float(p.high)
            if p.type == "int":  # each whole value an equal share (a log-scaled int too)
                lo, hi, step = math.ceil(low), math.floor(high), int(p.step or 1)
                point[key] = min(lo + step * math.floor(u * ((hi - lo) // step + 1)), hi)
                continue
            value = math.exp(math.log(low) + u * (math.log(high) - math.log(low))) if p.log else low + u * (high - low)
            if p.step is not None:
                value = low + round((value - low) / p.step) * p.step
            point[key] = min(max(value, low), high)
        points.append(point)
    return points


def grid_points(space: SearchSpace, base: dict[str, Any]) -> list[dict[str, Any]]:
    """The cartesian product of every parameter's grid, minus the points that break a constraint."""
    keys = [k for k, p in space.params.items() if p.grid_values()]
    missing = [k for k, p in space.params.items() if not p.grid_values()]
    if missing:
        raise ConfigError(f"search_space.params.{missing[0]}: the grid searcher needs 'grid' values or choices")
    points = [dict(zip(keys, combo)) for combo in itertools.product(*(space.params[k].grid_values() for k in keys))]
    return [pt for pt in points if satisfies(pt, space, base)]


def sensitivity_points(space: SearchSpace, base: dict[str, Any], params: list[str] | None,
                       loss_settings: list[str]) -> list[dict[str, Any]]:
    """One-at-a-time grids (RedReg Fig. 4/5): each parameter over its grid with the others at their
    defaults, for every loss setting."""
    names = [_qualify(p) for p in params] if params else [k for k, p in space.params.items() if p.grid]
    points = []
    for key in names:
        p = space.params.get(key)
        if p is None or not p.grid:
            raise ConfigError(f"sensitivity.params: '{key}' has no grid in the search space; "
                              f"allowed: {', '.join(k for k, q in space.params.items() if q.grid)}")
        for value in p.grid:
            if not satisfies({key: value}, space, base):
                raise ConfigError(f"search_space.params.{key}.grid: {value} breaks a constraint with the other "
                                  f"parameters at their defaults ({', '.join(space.constraints)})")
            for setting in loss_settings:
                points.append({"sweep_param": key, "sweep_value": value, key: value, "loss_setting": setting})
    return points


def apply_point(base: dict[str, Any], point: dict[str, Any]) -> dict[str, Any]:
    """Merge sampled dotted params into a base trial tree (bookkeeping keys are dropped)."""
    params = {k: v for k, v in point.items() if not k.startswith("sweep_")}
    return deep_merge(base, unflatten(params))
