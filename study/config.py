"""The study config: what to search, how, where to log -- validated whole before anything starts."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from search_spaces import SearchSpace, apply_point, load_space, sensitivity_points, validate_space
from trainables.errors import ConfigError
from trainables.config import (build_trial_config, deep_merge, flatten, format_validation_error,
                               parse_overrides, read_yaml)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Resources(Strict):
    cpu: float = Field(1.0, gt=0, le=1024)
    gpu: float = Field(0.0, ge=0, le=64, description="fractions share a GPU between trials")


class AshaConfig(Strict):
    grace_period: int = Field(2, ge=1)
    reduction_factor: float = Field(3.0, gt=1)


class MetricConfig(Strict):
    name: str = Field("val_acc", description="a reported key: val_acc, best_val_acc, val_f1, ...")
    mode: Literal["max", "min"] = "max"


class SensitivityConfig(Strict):
    params: list[str] | None = Field(None, description="parameters to sweep one at a time (default: all with a grid)")


class StudyConfig(Strict):
    name: str = Field(..., min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    mode: Literal["search", "sensitivity", "compare"] = "search"
    trial: dict[str, Any] = Field(default_factory=dict, description="the base trial config")
    loss_settings: list[Literal["multimodal", "multimodal+unimodal"]] = Field(default_factory=lambda: ["multimodal"])
    search_space: str | dict[str, Any] | None = None
    searcher: Literal["tpe", "random", "grid", "cmaes"] = "tpe"
    scheduler: Literal["asha", "none"] = "asha"
    asha: AshaConfig = Field(default_factory=AshaConfig)
    num_samples: int = Field(8, ge=1, le=1_000_000)
    max_concurrent: int = Field(2, ge=1, le=100_000)
    resources: Resources = Field(default_factory=Resources)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    metric: MetricConfig = Field(default_factory=MetricConfig)
    sampler_seed: int = Field(0, ge=0, description="seed of the Optuna sampler")
    max_failures: int = Field(2, ge=0, description="retries of a crashing trial from its last checkpoint")
    checkpoint_every: int = Field(1, ge=1, description="epochs between trial checkpoints (the last is always kept)")
    storage_path: str = Field("runs", description="studies live in STORAGE_PATH/NAME")
    tracking_uri: str | None = Field(None, description="default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db")
    experiment_name: str | None = Field(None, description="MLflow experiment (default: mmstudy/NAME)")
    ray_address: str | None = Field(None, description="default: $RAY_ADDRESS, else a local Ray")
    sensitivity: SensitivityConfig = Field(default_factory=SensitivityConfig)
    variants: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="compare mode: named trial overrides (e.g. methods), run x loss_settings")

    @field_validator("seeds")
    @classmethod
    def _unique(cls, seeds: list[int]) -> list[int]:
        if len(set(seeds)) != len(seeds) or any(s < 0 for s in seeds):
            raise ValueError("seeds must be distinct non-negative integers")
        return seeds

    @model_validator(mode="after")
    def _loss_settings(self) -> "StudyConfig":
        if len(set(self.loss_settings)) != len(self.loss_settings) or not self.loss_settings:
            raise ValueError("loss_settings must be a non-empty list without repeats")
        return self

    # --- resolved views ---------------------------------------------------------
    def base_trial(self) -> dict[str, Any]:
        """The base trial tree with the space's balancer and the first loss setting filled in."""
        base = dict(self.trial)
        space = self.space()
        if space.balancer and "name" not in (base.get("balancer") or {}):
            base = deep_merge(base, {"balancer": {"name": space.balancer}})
        return deep_merge(base, {"loss_setting": self.loss_settings[0]})

    def space(self) -> SearchSpace:
        return load_space(self.search_space)

    def resolved_tracking_uri(self) -> str:
        return self.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"

    def resolved_experiment(self) -> str:
        return self.experiment_name or f"mmstudy/{self.name}"

    def study_dir(self) -> Path:
        return (Path(self.storage_path) / self.name).resolve()

    def config_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()[:12]


def load_study_config(path: str | None, overrides: list[str] | None = None, raw: dict | None = None) -> StudyConfig:
    """Read YAML (safe loader), apply `key=value` overrides, validate everything a study will use."""
    if raw is None:
        if path is None:
            raise ConfigError("config: a study config file is required (e.g. study/configs/smoke.yaml)")
        raw = read_yaml(path, "config")
    if not isinstance(raw, dict):
        raise ConfigError("config: expected a mapping of study fields")
    if overrides:
        raw = deep_merge(raw, parse_overrides(overrides))
    try:
        cfg = StudyConfig(**raw)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, model=StudyConfig)) from None
    check_study(cfg)
    return cfg


def compare_points(cfg: StudyConfig) -> list[dict[str, Any]]:
    """Compare mode: every named variant under every loss setting (Table I rows)."""
    return [{"sweep_param": "variant", "sweep_value": name, **flatten(overrides), "loss_setting": setting}
            for name, overrides in cfg.variants.items() for setting in cfg.loss_settings]


def check_study(cfg: StudyConfig) -> None:
    """Everything that can be checked without running: the base trial, the space, the grids."""
    base = cfg.base_trial()
    try:
        trial = build_trial_config(base)
    except ConfigError as err:
        raise ConfigError(f"trial.{err}") from None
    space = cfg.space()
    if space.balancer and trial.balancer.name != space.balancer:
        raise ConfigError(f"search_space: space is for balancer '{space.balancer}' but trial.balancer.name is "
                          f"'{trial.balancer.name}'")
    validate_space(space, base)
    if cfg.mode == "compare":
        if not cfg.variants:
            raise ConfigError("variants: compare mode needs at least one named variant (e.g. none: {balancer: {name: none}})")
        for point in compare_points(cfg):
            try:
                build_trial_config(apply_point(base, point))
            except ConfigError as err:
                raise ConfigError(f"variants.{point['sweep_value']}: {err}") from None
    elif cfg.mode == "sensitivity":
        sensitivity_points(space, base, cfg.sensitivity.params, cfg.loss_settings)
    elif cfg.searcher == "grid":
        from search_spaces import grid_points

        if not grid_points(space, base):
            raise ConfigError("search_space: the grid has no point that meets the constraints")
    elif not space.sampled_names() and len(cfg.loss_settings) == 1:
        raise ConfigError("search_space: nothing to search (no sampled parameter); add params or use mode: sensitivity")
    if cfg.resources.gpu > 0 and cfg.resources.gpu > 1 and cfg.resources.gpu != int(cfg.resources.gpu):
        raise ConfigError("resources.gpu: fractions must be below 1 (e.g. 0.5); whole numbers above")
