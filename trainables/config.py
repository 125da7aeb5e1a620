"""The trial config: one validated tree that fully describes a training run.

Every number the trainer uses lives here (or in a balancer's / dataset's own params model),
so a trial logged to MLflow can be re-run exactly from its resolved config.
"""
from __future__ import annotations

import copy
import difflib
import math
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from trainables.errors import ConfigError


class Strict(BaseModel):
    """Base for config sections: unknown keys are errors, numbers are finite (no NaN or infinity), values are
    checked on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class ComponentSpec(Strict):
    """A named plug-in (dataset, balancer) plus its own params, validated by the plug-in's model."""

    model_config = ConfigDict(extra="allow")
    name: str

    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class ModelConfig(Strict):
    encoder: Literal["small", "resnet18"] = "small"
    fusion: Literal["concat", "sum", "film", "gated", "late"] = "concat"
    # Where per-modality logits come from: separate linear heads on z_m, or the fused head's block W_m.
    unimodal_head: Literal["separate", "fused_block"] = "separate"
    feature_dim: int = Field(64, ge=4, le=4096, description="small encoder width (resnet18 is 512)")
    fusion_dim: int = Field(128, ge=4, le=8192, description="hidden size of film/gated fusion")


class OptimConfig(Strict):
    name: Literal["sgd", "adam"] = "sgd"
    lr: float = Field(0.05, gt=0, le=10, description="paper configs set 0.002 (RedReg, Sec. IV-B)")
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(1e-4, ge=0)
    batch_size: int = Field(64, ge=1, le=65536)
    lr_step: int = Field(70, ge=1, description="StepLR step size in epochs")
    lr_gamma: float = Field(0.1, gt=0, le=1)


class TrialConfig(Strict):
    seed: int = Field(0, ge=0)
    epochs: int = Field(10, ge=1, le=100000)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    loss_setting: Literal["multimodal", "multimodal+unimodal"] = "multimodal"
    # "test" reproduces papers that select on the test set; it is labelled in every output.
    selection: Literal["val", "test"] = "val"
    num_workers: int = Field(0, ge=0, le=64)
    # Arithmetic of the forward pass (torch.autocast; fp16 adds a GradScaler). `auto`: bf16 on a CUDA device
    # that supports it, fp32 on the CPU (CPU runs stay bit-deterministic). Resolved by `resolve_precision`;
    # every epoch record carries the resolved value (`precision`). Balancer statistics stay fp32
    # (docs/balancers.md, "Precision"). On CUDA, bf16/fp16 also run the conv encoders channels_last.
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    # torch.compile of the encoders' conv/MLP/Transformer bodies (in place: parameter names and checkpoints
    # are unchanged, balancers' hooks and RedReg's monitor call the compiled modules).
    compile: bool = False
    # A subset of the dataset's modalities (e.g. [visual] for a unimodal baseline); null = all.
    modalities: list[str] | None = None
    dataset: ComponentSpec = Field(default_factory=lambda: ComponentSpec(name="synthetic"))
    model: ModelConfig = Field(default_factory=ModelConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    balancer: ComponentSpec = Field(default_factory=lambda: ComponentSpec(name="none"))

    @field_validator("dataset", mode="after")
    @classmethod
    def _check_dataset(cls, spec: ComponentSpec) -> ComponentSpec:
        from trainables.data.registry import dataset_params_model

        return _validated_component(spec, dataset_params_model(spec.name), "dataset")

    @field_validator("balancer", mode="after")
    @classmethod
    def _check_balancer(cls, spec: ComponentSpec) -> ComponentSpec:
        from trainables.balancers.registry import balancer_class

        return _validated_component(spec, balancer_class(spec.name).Params, "balancer")

    @model_validator(mode="after")
    def _check_cross_fields(self) -> "TrialConfig":
        if self.model.unimodal_head == "fused_block" and self.model.fusion not in ("concat", "sum", "late"):
            raise ValueError(
                "model.unimodal_head: 'fused_block' needs model.fusion in ['concat', 'sum', 'late'] "
                f"(got fusion '{self.model.fusion}'); use 'separate'"
            )
        from trainables.balancers.registry import balancer_class

        balancer_class(self.balancer.name).check_trial(self)  # what this method cannot run, before any record
        return self

    def dataset_params(self) -> BaseModel:
        from trainables.data.registry import dataset_params_model

        return dataset_params_model(self.dataset.name)(**self.dataset.params())

    def balancer_params(self) -> BaseModel:
        from trainables.balancers.registry import balancer_class

        return balancer_class(self.balancer.name).Params(**self.balancer.params())

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def _validated_component(spec: ComponentSpec, params_model: type[BaseModel], field: str) -> ComponentSpec:
    """Validate a plug-in's params and store them fully resolved (defaults filled in)."""
    try:
        params = params_model.model_validate(spec.params())
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, prefix=field, model=params_model)) from None
    for key, value in flatten(params.model_dump()).items():  # a plug-in's own model may let NaN or inf through
        values = value if isinstance(value, (list, tuple)) else [value]
        if any(isinstance(v, float) and not math.isfinite(v) for v in values):
            raise ConfigError(f"{field}.{key}: must be a finite number (got {value!r})")
    return ComponentSpec(name=spec.name, **params.model_dump(mode="json"))


def format_validation_error(err: ValidationError, prefix: str = "", model: type[BaseModel] | None = None) -> str:
    """One line for the first error: the dotted field, what is wrong, and what is allowed."""
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"])
    field = f"{prefix}.{loc}" if prefix and loc else (prefix or loc)
    if first["type"] == "extra_forbidden":
        allowed = _allowed_keys(model, first["loc"][:-1]) if model is not None else []
        hint = difflib.get_close_matches(str(first["loc"][-1]), allowed, n=1)
        did_you_mean = f"; did you mean '{_join(prefix, first['loc'][:-1], hint[0])}'?" if hint else ""
        allowed_text = ", ".join(sorted(allowed)) if allowed else "none (this takes no parameters)"
        return f"{field}: unknown key{did_you_mean} (allowed keys: {allowed_text})"
    msg = first["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    # A ConfigError raised inside a nested validator already names its field.
    ctx_err = (first.get("ctx") or {}).get("error")
    if isinstance(ctx_err, ConfigError):
        return str(ctx_err)
    if not loc:
        return f"{prefix}: {msg}" if prefix else msg
    return f"{field}: {msg} (got {first.get('input')!r})"


def _join(prefix: str, loc: tuple, key: str) -> str:
    return ".".join([p for p in [prefix, *[str(x) for x in loc], key] if p])


def _allowed_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    for part in loc:
        field = model.model_fields.get(str(part))
        ann = getattr(field, "annotation", None) if field else None
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return []
        model = ann
    return list(model.model_fields)


def read_yaml(path: str | Path, field: str) -> Any:
    """A YAML file read with the safe loader (never evaluated); a missing or malformed file is a one-line
    ConfigError naming `field`."""
    path = Path(path)
    try:
        text = path.read_text() if path.is_file() else None
    except (OSError, ValueError) as err:  # unreadable, a name too long or with a NUL byte, not UTF-8
        raise ConfigError(f"{field}: cannot read '{path}' ({type(err).__name__}: {str(err)[:200]})") from None
    if text is None:
        raise ConfigError(f"{field}: no such file '{path}'")
    try:
        return yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{field}: {path} is not valid YAML ({str(err).splitlines()[0]})") from None


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """`a.b=1 c=film` -> nested dict; values are parsed as YAML scalars (safe loader)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"override '{pair}': expected key=value, e.g. optim.lr=0.01")
        key, raw = pair.split("=", 1)
        if not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override '{pair}': empty key")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        set_dotted(out, key, value)
    return out


def set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for part in parts[:-1]:
        nxt = node.get(part)
        if not isinstance(nxt, dict):
            nxt = {}
            node[part] = nxt
        node = nxt
    node[parts[-1]] = value


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            # A new plug-in name resets that plug-in's params: old params may not exist for it.
            if "name" in value and value["name"] != out[key].get("name"):
                out[key] = copy.deepcopy(value)
            else:
                out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict):
            out.update(flatten(value, name))
        else:
            out[name] = value
    return out


def unflatten(flat: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in flat.items():
        set_dotted(out, key, value)
    return out


def default_tree() -> dict[str, Any]:
    return {"dataset": {"name": "synthetic"}, "balancer": {"name": "none"}}


def build_trial_config(raw: dict[str, Any] | None = None, overrides: list[str] | dict | None = None) -> TrialConfig:
    """Validate a raw dict (plus overrides) into a TrialConfig, or raise a one-line ConfigError."""
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError("config: expected a mapping of fields")
    # Start from the defaults so `dataset.size=small` works without restating `dataset.name`.
    tree = deep_merge(default_tree(), raw or {})
    if overrides:
        tree = deep_merge(tree, overrides if isinstance(overrides, dict) else parse_overrides(list(overrides)))
    if not isinstance(tree, dict):
        raise ConfigError("config: expected a mapping of fields")
    try:
        return TrialConfig.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, model=TrialConfig)) from None
