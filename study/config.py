"""The study config: what to search, how, where to log -- validated whole, once, before anything starts.

A study's resolved config (its search space inlined, its tracking URI and experiment filled in) is the
snapshot the study folder and the parent MLflow run keep: resume, report and sync read it, never the live
YAML files it came from.
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import (BaseModel, Field, PrivateAttr, RootModel, ValidationError, field_validator, model_serializer,
                      model_validator)

from search_spaces import SearchSpace, apply_point, grid_points, load_space, sensitivity_points, validate_space
from study.credentials import adopt, adopt_environment
from trainables.config import (Strict, TrialConfig, build_trial_config, deep_merge, flatten,
                               format_validation_error, parse_overrides, read_yaml)
from trainables.errors import ConfigError

# A trial's `mmstudy.role`: the study's own trials by mode, then the ones every study adds.
OWN_ROLES = ("search", "sensitivity", "compare")
ROLES = (*OWN_ROLES, "baseline", "confirm")
LOSS_SETTINGS = ("multimodal", "multimodal+unimodal")

# Benchmark mode's shared knobs when the config names none: every method, joint training included, samples
# its learning rate inside its own budget (docs/benchmark.md). A mapping of dotted trial keys to search specs.
DEFAULT_SHARED_SPACE = {"optim.lr": {"type": "float", "low": 1.0e-3, "high": 1.0e-1, "log": True}}
# Samplers with a random start-up phase; TPE's n_startup_trials follows the budget (`startup_trials`).
STARTUP_SAMPLERS = ("tpe", "cmaes")


def default_tracking_uri() -> str:
    """$MLFLOW_TRACKING_URI (without its credentials: study.credentials), else a SQLite store in the working
    directory (which a bare `mlflow ui` opens), as an absolute path (`absolute_store_uri`)."""
    return absolute_store_uri(adopt_environment() or "sqlite:///mlflow.db")


def absolute_store_uri(uri: str) -> str:
    """A SQLite store named relative to the working directory (`sqlite:///mlflow.db`) made absolute: a study
    keeps the store it started with, and `sync`, `resume` or `report` run from another folder open that one
    instead of creating an empty store where they run. Other URIs are returned unchanged."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        path, sep, query = uri[len("sqlite:///"):].partition("?")
        return f"sqlite:///{Path(path).expanduser().resolve()}{sep}{query}" if path and path != ":memory:" else uri
    return uri


class Resources(Strict):
    cpu: float = Field(1.0, gt=0, le=1024)
    gpu: float = Field(0.0, ge=0, le=64, description="fractions share a GPU between trials")

    @field_validator("gpu")
    @classmethod
    def _whole_above_one(cls, gpu: float) -> float:
        if gpu > 1 and gpu != int(gpu):
            raise ValueError("fractions must be below 1 (e.g. 0.5); whole numbers above")
        return gpu


class AshaConfig(Strict):
    grace_period: int = Field(2, ge=1)
    reduction_factor: float = Field(3.0, gt=1)


# What a trial reports that a study may rank by: validation keys (each also as best_<key>, its value at the
# selected epoch) and the training loss. val_gap: |difference| of the unimodal heads' validation accuracies.
METRIC_NAMES = r"(best_)?val_(acc|f1|gap|imbalance|acc_\w+|shapley_\w+)|train_loss"
METRIC_HELP = ("val_acc, val_f1, val_gap, val_imbalance, val_acc_<modality>, val_shapley_<modality> (each also as "
               "best_<name>), train_loss")


# The TOST equivalence margin's one default, in accuracy points (analysis.stats.MARGIN is it in accuracy units).
EQUIVALENCE_MARGIN = 1.0


class MetricConfig(Strict):
    name: str = Field("val_acc", description=f"a reported key: {METRIC_HELP}")
    mode: Literal["max", "min"] = "max"


class Objectives(RootModel[list[MetricConfig]]):
    """The study's metric: one `{name, mode}` or a list of them (multi-objective). Optuna searches them all;
    the first is the primary objective, which ASHA (one metric only), Tune, the console and the summary's
    "best" use -- `.name` and `.mode` are the first's."""

    @property
    def name(self) -> str:
        return self.root[0].name

    @property
    def mode(self) -> str:
        return self.root[0].mode

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.root]

    @property
    def modes(self) -> list[str]:
        return [m.mode for m in self.root]

    @model_serializer(mode="wrap")
    def _as_given(self, handler):
        """One objective keeps the mapping form (the snapshot of a single-metric study is unchanged)."""
        dumped = handler(self)
        return dumped[0] if len(dumped) == 1 else dumped


def check_objectives(raw: Any) -> list[Any]:
    """`metric`: a mapping or a non-empty list of mappings with known, distinct names and max/min modes."""
    allowed = f"a {{name, mode}} mapping or a list of them; names: {METRIC_HELP}; modes: max, min"
    items = [raw] if isinstance(raw, dict) or isinstance(raw, BaseModel) else raw
    if not isinstance(items, list) or not items:
        raise ConfigError(f"metric: expected {allowed} (got {raw!r})")
    names = []
    for i, item in enumerate(items):
        item = item.model_dump() if isinstance(item, BaseModel) else item
        where = "metric" if isinstance(raw, dict) else f"metric[{i}]"
        if not isinstance(item, dict) or set(item) - {"name", "mode"}:
            raise ConfigError(f"{where}: expected {allowed} (got {item!r})")
        name, mode = item.get("name", "val_acc"), item.get("mode", "max")
        if not isinstance(name, str) or not re.fullmatch(METRIC_NAMES, name):
            raise ConfigError(f"{where}.name: unknown metric {name!r} (allowed: {METRIC_HELP})")
        if mode not in ("max", "min"):
            raise ConfigError(f"{where}.mode: {mode!r} is not one of max, min")
        names.append(name)
    if len(set(names)) != len(names):
        raise ConfigError(f"metric: each metric once (got {names})")
    return items


class SensitivityConfig(Strict):
    params: list[str] | None = Field(None, description="parameters to sweep one at a time (default: all with a grid)")


def _distinct(seeds: list[int]) -> list[int]:
    if len(set(seeds)) != len(seeds) or any(s < 0 for s in seeds):
        raise ValueError("seeds must be distinct non-negative integers")
    return seeds


class BaselineConfig(Strict):
    """Joint training (`none`) with the study's trial config, budget and loss settings, as trials of the study."""
    enabled: bool | None = Field(None, description="default: on for search and sensitivity, off for compare")
    seeds: list[int] | None = Field(None, min_length=3, description="default: the confirmation seeds (search) "
                                    "or the study's seeds, extended to three")
    _check = field_validator("seeds")(lambda cls, s: s if s is None else _distinct(s))


class ConfirmConfig(Strict):
    """After a search: the top-k configurations re-trained with seeds the search never saw (winner's curse)."""
    top_k: int = Field(3, ge=0, le=100, description="0 turns confirmation off")
    seeds: list[int] = Field(default_factory=lambda: [1000, 1001, 1002], min_length=1)
    _check = field_validator("seeds")(lambda cls, s: _distinct(s))


class StudyConfig(Strict):
    name: str = Field(..., min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    mode: Literal["search", "sensitivity", "compare", "benchmark"] = "search"
    trial: dict[str, Any] = Field(default_factory=dict, description="the base trial config")
    loss_settings: list[Literal["multimodal", "multimodal+unimodal"]] = Field(
        default_factory=lambda: ["multimodal"], min_length=1)
    search_space: str | dict[str, Any] | None = None
    searcher: Literal["tpe", "random", "grid", "cmaes"] = "tpe"
    scheduler: Literal["asha", "none"] = "asha"
    asha: AshaConfig = Field(default_factory=AshaConfig)
    num_samples: int = Field(8, ge=1, le=1_000_000)
    max_concurrent: int = Field(2, ge=1, le=100_000)
    resources: Resources = Field(default_factory=Resources)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    metric: Objectives = Field(default_factory=lambda: Objectives([MetricConfig()]),
                               description="one {name, mode} or a list (multi-objective; the first is primary)")
    baseline: BaselineConfig = Field(default_factory=BaselineConfig)
    confirm: ConfirmConfig = Field(default_factory=ConfirmConfig)
    sampler_seed: int = Field(0, ge=0, description="seed of the Optuna sampler")
    max_failures: int = Field(2, ge=0, description="retries of a crashing trial from its last checkpoint")
    checkpoint_every: int = Field(1, ge=1, description="epochs between trial checkpoints (the last is always kept)")
    log_checkpoint: Literal["best", "none"] | None = Field(
        None, description="the best epoch's weights on each trial's MLflow run (default: none for synthetic data)")
    storage_path: str = Field("runs", description="studies live in STORAGE_PATH/NAME")
    tracking_uri: str | None = Field(None, description="default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db")
    _tracking_uri = field_validator("tracking_uri")(lambda cls, uri: uri and adopt(uri))  # credentials never kept
    experiment_name: str | None = Field(None, description="MLflow experiment (default: mmstudy/NAME)")
    ray_address: str | None = Field(None, description="default: $RAY_ADDRESS, else a local Ray")
    sensitivity: SensitivityConfig = Field(default_factory=SensitivityConfig)
    variants: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="compare mode: named trial overrides (e.g. methods), run x loss_settings")
    methods: list[str | dict[str, Any]] = Field(
        default_factory=list, description="benchmark mode: balancer names, or name: {fixed fields}; each searches "
        "its own space with num_samples trials (study/methods.py)")
    shared_space: dict[str, Any] | None = Field(
        None, description="knobs every method samples inside its own budget (dotted trial key -> search spec; "
        "default: optim.lr log-uniform 1e-3..1e-1 in benchmark mode, none otherwise)")
    data_seed: Literal["per_seed", "fixed"] | None = Field(
        None, description="per_seed: each training seed draws its own data (synthetic's dataset.seed follows it); "
        "default per_seed in benchmark mode where the dataset allows it, else fixed")
    searcher_options: dict[str, Any] = Field(
        default_factory=dict, description="keyword arguments of the Optuna sampler (e.g. n_startup_trials; "
        "TPE's default: max(3, num_samples // 4))")
    equivalence_margin: float = Field(EQUIVALENCE_MARGIN, gt=0, le=100,
                                      description="TOST margin in accuracy points (every report's verdict)")

    _space: SearchSpace = PrivateAttr()
    _shared: SearchSpace = PrivateAttr()
    _trial: TrialConfig = PrivateAttr()
    _methods: list = PrivateAttr(default_factory=list)

    _seeds = field_validator("seeds")(lambda cls, s: _distinct(s))
    _metric = field_validator("metric", mode="before")(lambda cls, m: check_objectives(m))

    @field_validator("loss_settings")
    @classmethod
    def _no_repeats(cls, settings: list[str]) -> list[str]:
        if len(set(settings)) != len(settings):
            raise ValueError("loss_settings must be a list without repeats")
        return settings

    @model_validator(mode="before")
    @classmethod
    def _trial_loss_setting(cls, raw: Any) -> Any:
        """A study's loss settings are `loss_settings`; a `trial.loss_setting` alone becomes that list, and
        one that the list does not hold is refused (it would otherwise be silently replaced)."""
        if not isinstance(raw, dict) or not isinstance(raw.get("trial"), dict) or "loss_setting" not in raw["trial"] \
                or not isinstance(raw.get("loss_settings", []), (list, type(None))):  # a wrong type: its field says so
            return raw
        setting = raw["trial"]["loss_setting"]
        if "loss_settings" not in raw:
            return {**raw, "loss_settings": [setting]}
        if setting not in (raw["loss_settings"] or []):
            raise ConfigError(f"trial.loss_setting: '{setting}' is not in the study's loss_settings "
                              f"{raw['loss_settings']}; set the study's loss_settings instead")
        return raw

    @model_validator(mode="after")
    def _resolve_and_check(self) -> "StudyConfig":
        """Everything that can be checked without running: the base trial (validated here, once), the space,
        the grids, the baseline and confirmation seeds."""
        self._space = load_space(self.search_space)
        base = self.base_trial()
        try:
            self._trial = build_trial_config(base)
        except ConfigError as err:
            raise ConfigError(f"trial.{err}") from None
        space = self._space
        if space.balancer and self._trial.balancer.name != space.balancer:
            raise ConfigError(f"search_space: space is for balancer '{space.balancer}' but trial.balancer.name is "
                              f"'{self._trial.balancer.name}'")
        validate_space(space, base)
        self._shared = check_shared_space(self)
        check_data_seed(self)
        check_searcher_options(self)
        if self.mode == "compare":
            if not self.variants:
                raise ConfigError("variants: compare mode needs at least one named variant "
                                  "(e.g. none: {balancer: {name: none}})")
            for point in compare_points(self):
                try:
                    build_trial_config(apply_point(base, point))
                except ConfigError as err:
                    raise ConfigError(f"variants.{point['sweep_value']}: {err}") from None
        elif self.mode == "sensitivity":
            sensitivity_points(space, base, self.sensitivity.params, self.loss_settings)
        elif self.mode == "benchmark":
            self._methods = benchmark_methods(self)
        elif self.methods:
            raise ConfigError("methods: only for mode: benchmark (compare mode names variants)")
        elif self.searcher == "grid":
            if not grid_points(space, base):
                raise ConfigError("search_space: the grid has no point that meets the constraints")
        elif not self.study_space().sampled_names() and len(self.loss_settings) == 1:
            raise ConfigError("search_space: nothing to search (no sampled parameter); add params or use "
                              "mode: sensitivity")
        if len(self.metric.root) > 1 and self.mode in ("search", "benchmark") and self.searcher == "cmaes":
            raise ConfigError("searcher: cmaes searches one metric only; with several metrics use tpe, random or grid")
        if self.confirming() and set(self.confirm.seeds) & set(self.seeds):
            raise ConfigError(f"confirm.seeds: must be seeds the search never saw (the study's seeds are "
                              f"{self.seeds})")
        return self

    # --- resolved views ---------------------------------------------------------
    def base_trial(self) -> dict[str, Any]:
        """The base trial tree with the space's balancer and the first loss setting filled in."""
        base = dict(self.trial)
        space = self._space
        given = base.get("balancer") or {}
        if space.balancer and isinstance(given, dict) and "name" not in given:  # (not a mapping: the trial says so)
            base = deep_merge(base, {"balancer": {"name": space.balancer}})
        return deep_merge(base, {"loss_setting": self.loss_settings[0]})

    def trial_config(self) -> TrialConfig:
        """The validated base trial (built once, when the study config was validated)."""
        return self._trial

    def space(self) -> SearchSpace:
        return self._space

    def shared(self) -> SearchSpace:
        """The shared knobs (study.methods puts them in every method's space; a search study's, in its space)."""
        return self._shared

    def study_space(self) -> SearchSpace:
        """A search study's sampled space: the shared knobs, then the space's own parameters (a shared knob's
        definition wins over the space's)."""
        from study.methods import with_shared

        return with_shared(self._space, self._shared)[0]

    def data_seed_mode(self) -> str:
        """per_seed or fixed (`data_seed`, resolved: per_seed by default in benchmark mode where the dataset
        draws its data from a seed)."""
        if self.data_seed is not None:
            return self.data_seed
        return "per_seed" if self.mode == "benchmark" and draw_seed_key(self._trial.dataset.name) else "fixed"

    def per_seed_keys(self) -> list[str]:
        """The trial keys each training seed also sets (`dataset.seed` under data_seed: per_seed)."""
        key = draw_seed_key(self._trial.dataset.name)
        return [key] if key and self.data_seed_mode() == "per_seed" else []

    def noise_sources(self) -> str:
        """What the intervals over seeds cover (the parent run's `mmstudy.noise_sources`)."""
        if self.per_seed_keys():
            return "training seed, data draw"
        if draw_seed_key(self._trial.dataset.name):
            return "training seed; fixed data draw"
        return "training seed; fixed split"

    def startup_trials(self) -> int | None:
        """How many of each method's trials the sampler draws at random before it models the results (None:
        a sampler without a start-up phase)."""
        if self.searcher not in STARTUP_SAMPLERS:
            return None
        return self.searcher_options.get("n_startup_trials", max(3, self.num_samples // 4))

    def sampler_options(self) -> dict[str, Any]:
        """The Optuna sampler's keyword arguments: `searcher_options` with the start-up length filled in."""
        options = dict(self.searcher_options)
        if self.startup_trials() is not None:
            options["n_startup_trials"] = self.startup_trials()
        return options

    def protocol_tags(self) -> dict[str, str]:
        """What the parent run records about the protocol: the shared knobs (JSON list of dotted keys) and the
        sources of noise the seeds' intervals cover."""
        return {"mmstudy.shared_knobs": json.dumps(list(self._shared.params)),
                "mmstudy.noise_sources": self.noise_sources()}

    def baseline_seeds(self) -> list[int]:
        """The baseline's seeds: given, else the confirmation seeds (paired with the confirmed configurations)
        or the study's seeds, extended to three."""
        if self.baseline.seeds:
            return list(self.baseline.seeds)
        seeds = list(self.confirm.seeds if self.confirming() else self.seeds)
        while len(seeds) < 3:
            seeds.append(max(seeds) + 1)
        return seeds

    def has_baseline(self) -> bool:
        """The planned joint-training trial (role baseline). A benchmark has none: joint training is one of its
        methods in every loss setting, tuned and confirmed like the others (study.methods)."""
        if self.mode == "benchmark":
            return False
        return self.baseline.enabled if self.baseline.enabled is not None else self.mode != "compare"

    def confirming(self) -> bool:
        return self.mode in ("search", "benchmark") and self.confirm.top_k > 0

    def methods_resolved(self) -> list:
        """Benchmark mode: the validated methods (study.methods.Method), in the config's order."""
        return self._methods

    def checkpoint_policy(self) -> str:
        if self.log_checkpoint is not None:
            return self.log_checkpoint
        return "none" if self._trial.dataset.name == "synthetic" else "best"

    def resolved_tracking_uri(self) -> str:
        return absolute_store_uri(self.tracking_uri) if self.tracking_uri else default_tracking_uri()

    def resolved_experiment(self) -> str:
        return self.experiment_name or f"mmstudy/{self.name}"

    def study_dir(self) -> Path:
        return (Path(self.storage_path) / self.name).resolve()

    def snapshot(self) -> dict[str, Any]:
        """The resolved config a study keeps: the search space inlined, tracking and experiment filled in."""
        raw = self.model_dump(mode="json")
        raw.update(search_space=self._space.model_dump(mode="json", exclude_defaults=True),
                   shared_space={k: p.model_dump(mode="json", exclude_defaults=True)
                                 for k, p in self._shared.params.items()},
                   data_seed=self.data_seed_mode(),
                   searcher_options=self.sampler_options(),
                   tracking_uri=self.resolved_tracking_uri(), experiment_name=self.resolved_experiment())
        return raw

    def config_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.snapshot(), sort_keys=True).encode()).hexdigest()[:12]


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
        return StudyConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, model=StudyConfig)) from None


def benchmark_methods(cfg: StudyConfig) -> list:
    """Benchmark mode: the trial and study fields it needs, then every method (study.methods)."""
    from study.methods import resolve_methods

    if cfg.search_space:  # (the snapshot keeps an empty mapping)
        raise ConfigError("search_space: benchmark mode searches each method's own space; remove search_space")
    if "balancer" in cfg.trial:
        raise ConfigError("trial.balancer: benchmark mode sets the balancer per method; give fixed fields in "
                          "methods (e.g. - redreg: {variant: code})")
    if cfg.searcher == "grid":
        raise ConfigError("searcher: benchmark mode samples with Optuna; allowed: tpe, random, cmaes")
    if len(cfg.loss_settings) > 1:
        raise ConfigError("loss_settings: benchmark mode takes one loss setting for its methods (joint training "
                          "runs in every setting; a method fixes its own, e.g. - arl: {loss_setting: multimodal})")
    if cfg.baseline.enabled is False:
        raise ConfigError("baseline.enabled: benchmark mode always compares with joint training (in every loss "
                          "setting); allowed: true")
    if cfg.baseline.seeds and list(cfg.baseline.seeds) != list(cfg.confirm.seeds):
        raise ConfigError(f"baseline.seeds: benchmark mode confirms joint training on confirm.seeds like every "
                          f"method (paired seeds); remove baseline.seeds or set it to {list(cfg.confirm.seeds)}")
    if cfg.variants:
        raise ConfigError("variants: only for mode: compare (benchmark mode lists methods)")
    if cfg.confirm.top_k < 1:
        raise ConfigError("confirm.top_k: benchmark mode reports each method's confirmed best; at least 1")
    return resolve_methods(cfg.methods, cfg.base_trial(), cfg.shared(), LOSS_SETTINGS)


def compare_points(cfg: StudyConfig) -> list[dict[str, Any]]:
    """Compare mode: every named variant under every loss setting (Table I rows)."""
    return [{"sweep_param": "variant", "sweep_value": name, **flatten(overrides), "loss_setting": setting}
            for name, overrides in cfg.variants.items() for setting in cfg.loss_settings]


def draw_seed_key(dataset: str) -> str | None:
    """The trial key that seeds a dataset's draw (`dataset.seed` for synthetic data), None for a dataset with a
    fixed split: its params model names the field (`DRAW_SEED`)."""
    from trainables.data.registry import dataset_params_model

    name = getattr(dataset_params_model(dataset), "DRAW_SEED", None)
    return f"dataset.{name}" if name else None


def check_shared_space(cfg: StudyConfig) -> SearchSpace:
    """`shared_space`: trial knobs every method has (not a balancer's field, not the loss setting), valid for the
    trial; only where trials are sampled (search and benchmark modes)."""
    raw = cfg.shared_space
    if raw is None:
        raw = DEFAULT_SHARED_SPACE if cfg.mode == "benchmark" and cfg.searcher != "grid" else {}
    if raw and (cfg.mode not in ("search", "benchmark") or cfg.searcher == "grid"):
        raise ConfigError("shared_space: only for sampled searches (mode: search or benchmark, searcher: tpe, "
                          "random or cmaes)")
    shared = load_space({"params": raw}, field="shared_space")
    for key in shared.params:
        if key.startswith("balancer.") or key in ("loss_setting", "seed", "epochs"):
            raise ConfigError(f"shared_space.{key}: a shared knob is a trial field every method has "
                              f"(e.g. optim.lr, optim.weight_decay); balancer fields, loss_setting, seed and epochs "
                              f"are not shared")
    validate_space(shared, cfg.base_trial(), field="shared_space")
    return shared


def check_data_seed(cfg: StudyConfig) -> None:
    """`data_seed: per_seed` needs a dataset that draws its data from a seed, and no trial.dataset seed that it
    would silently replace."""
    dataset = cfg.trial_config().dataset.name
    key = draw_seed_key(dataset)
    if cfg.data_seed == "per_seed" and key is None:
        raise ConfigError(f"data_seed: dataset '{dataset}' has a fixed split (no data draw to seed); allowed: fixed")
    if cfg.data_seed_mode() == "per_seed" and key.split(".", 1)[1] in (cfg.trial.get("dataset") or {}):
        raise ConfigError(f"trial.{key}: with data_seed: per_seed each training seed draws its own data ({key} "
                          f"= the seed); remove it, or set data_seed: fixed")


def check_searcher_options(cfg: StudyConfig) -> None:
    """`searcher_options`: keyword arguments the chosen Optuna sampler takes (built once here to check them);
    the seed is `sampler_seed`."""
    if not cfg.searcher_options:
        return
    if cfg.searcher == "grid":
        raise ConfigError("searcher_options: the grid searcher has no sampler; allowed with tpe, random, cmaes")
    import inspect

    sampler = optuna_sampler_class(cfg.searcher)
    takes_objects = ("seed", "gamma", "weights", "independent_sampler")  # the seed is ours; functions and samplers
    allowed = [name for name in inspect.signature(sampler).parameters  # are no config values
               if name not in takes_objects and not name.endswith("_func")]
    for key in cfg.searcher_options:
        if key not in allowed:
            raise ConfigError(f"searcher_options.{key}: not an option of Optuna's {sampler.__name__} "
                              f"(allowed: {', '.join(allowed)}; the seed is sampler_seed)")
    startup = cfg.searcher_options.get("n_startup_trials", 0)
    if not isinstance(startup, int) or isinstance(startup, bool) or startup < 0:
        raise ConfigError(f"searcher_options.n_startup_trials: a whole number >= 0 (got {startup!r})")
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna's experimental-feature warnings (e.g. multivariate)
            sampler(seed=0, **cfg.sampler_options())
    except (TypeError, ValueError) as err:
        raise ConfigError(f"searcher_options: {str(err).splitlines()[0][:200]}") from None


def optuna_sampler_class(searcher: str):
    import optuna

    return {"tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler,
            "cmaes": optuna.samplers.CmaEsSampler}[searcher]
