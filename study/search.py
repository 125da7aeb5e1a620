"""What a study trains and in which order: one Tune config shape for every mode, the one searcher that proposes
the trials, and ASHA per method.

Every trial's Tune config is `{"point": {dotted key: value}, "role": ..., "seeds": [...]}`, plus, where they
apply: `confirms` (the search trial a confirmation re-trains), `method` (a benchmark's method label),
`confirm_rank` (the rank of the search trial it confirms, 1 = the reported configuration), `joint_baseline`
(joint training as a benchmark's reference), `startup` (1 for a start-up trial: shared knobs at their stratified
values, the rest drawn at random; 0 after) and `per_seed_keys` (trial keys each seed also sets: `dataset.seed` under
`data_seed: per_seed`). The trainable, the MLflow writer (tags `mmstudy.<key>`) and the console read this one shape.
Roles: search | sensitivity | compare (the study's own trials), baseline (joint training, `none`, same trial
config and budget; not in a benchmark, where joint training is a method), confirm (a top-k search configuration
re-trained with seeds the search never saw).

One searcher (`StudySearcher`) for search and benchmark studies: a benchmark is one search per method, a search
study the same with one method. It holds one Optuna study per method (all in the study folder's optuna.journal)
and hands out their proposals in turn, planned trials first, each method's confirmation as soon as its own search
has ended. Its state is plain JSON; on restore the Optuna studies are loaded again from the journal.
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher

from search_spaces import SearchSpace, define_by_run, grid_points, sensitivity_points, stratified_points
from study.config import OWN_ROLES, StudyConfig, compare_points, optuna_sampler_class
from study.methods import with_shared
from trainables.errors import ConfigError

OPTUNA_FILE = "optuna.journal"
METHOD_KEY = "method"  # in a trial's Tune config; MLflow tag mmstudy.method
# The Tune config keys besides point / role / seeds that the MLflow writer copies to `mmstudy.<key>` tags.
TAGGED_KEYS = ("confirms", METHOD_KEY, "confirm_rank", "joint_baseline", "startup")
STATE_VERSION = 1


def trial_spec(point: dict[str, Any], role: str, seeds: list[int], confirms: str | None = None,
               **extra: Any) -> dict[str, Any]:
    """The Tune config of one trial (the one shape); `extra` keys set to None are left out."""
    spec = {"point": dict(point), "role": role, "seeds": list(seeds)}
    if confirms is not None:
        spec["confirms"] = confirms
    spec.update({k: v for k, v in extra.items() if v is not None})
    return spec


def train(config: dict[str, Any], **kwargs) -> None:
    """The trial function: the trainable adapter with this trial's own seeds (a confirmation's are fresh)."""
    import logging

    from trainables.tune_trainable import run_trial

    logging.getLogger("ray.train").setLevel(logging.WARNING)  # no "Checkpoint successfully created" per epoch
    run_trial(config, seeds=config["seeds"], **kwargs)


def planned_trials(cfg: StudyConfig) -> list[dict[str, Any]]:
    """The trials known before the study starts: the baseline (one per loss setting), every grid point, and a
    benchmark's fixed methods (nothing to sample: trained once with the confirmation seeds)."""
    base, space, seeds = cfg.base_trial(), cfg.space(), list(cfg.seeds)
    planned = [trial_spec({"balancer.name": "none", "loss_setting": setting}, "baseline", cfg.baseline_seeds())
               for setting in cfg.loss_settings] if cfg.has_baseline() else []
    if cfg.mode == "compare":
        planned += [trial_spec(p, "compare", seeds) for p in compare_points(cfg)]
    elif cfg.mode == "sensitivity":
        points = sensitivity_points(space, base, cfg.sensitivity.params, cfg.loss_settings)
        planned += [trial_spec(p, "sensitivity", seeds) for p in points]
    elif cfg.mode == "benchmark":
        planned += [trial_spec(m.point, "confirm", cfg.confirm.seeds, method=m.label, confirm_rank=1,
                               joint_baseline=1 if m.joint_baseline else None)
                    for m in cfg.methods_resolved() if not m.searched]
    elif cfg.searcher == "grid":
        planned += [trial_spec(dict(p, loss_setting=s), "search", seeds)
                    for p in grid_points(space, base) for s in cfg.loss_settings]
    return planned


# ----------------------------------------------------------------------------- the methods a searcher samples


@dataclass
class MethodSearch:
    """One method's search: its proposals are `point` plus a draw from `space` (on `base`), `num_samples` of
    them, in the Optuna study `study_name`. `key` is its label, "" for a search study's one method (whose
    trials carry no `method`)."""
    key: str
    point: dict[str, Any] = field(default_factory=dict)
    space: SearchSpace | None = None
    base: dict[str, Any] = field(default_factory=dict)
    num_samples: int = 0
    study_name: str | None = None
    joint_baseline: bool = False
    categoricals: dict[str, list[Any]] | None = None  # a search study's several loss settings
    startup_points: list[dict[str, Any]] = field(default_factory=list)  # the shared knobs' first values (enqueued)


@dataclass
class SamplerSpec:
    """Which Optuna sampler each method's study uses: `name` (tpe, random, cmaes), its seed and options
    (`StudyConfig.sampler_options`: TPE's n_startup_trials filled in from the budget)."""
    name: str = "tpe"
    seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)

    def build(self, finished_before: int):
        """A fresh sampler. A study loaded again from the journal after a resume gets another seed (derived
        from how many trials it holds), so it does not repeat its first random draws."""
        seed = (self.seed + 1_000_003 * finished_before) % 2**32
        return optuna_sampler_class(self.name)(seed=seed, **self.options)

    @property
    def startup(self) -> int | None:
        """Trials drawn at random before the sampler models the results (Optuna's `n_startup_trials`: until
        that many trials finished in the study); every trial for the random sampler; None when it has none."""
        if self.name == "random":
            return math.inf
        return self.options.get("n_startup_trials")


def optuna_study_name(study_name: str, label: str) -> str:
    """The Optuna study of one benchmark method in the study's journal (optuna-dashboard lists one per method)."""
    return f"{study_name}/{label}"


def method_searches(cfg: StudyConfig) -> list[MethodSearch]:
    """The methods a study samples: a benchmark's searched methods (each its own Optuna study, `<study>/<label>`),
    a search study's one (its Optuna study keeps the study's name), a grid search's one without a sampler."""
    base = cfg.base_trial()
    shared = shared_startup(cfg)
    if cfg.mode == "benchmark":
        return [MethodSearch(m.label, m.point, m.space, m.base(base), cfg.num_samples,
                             optuna_study_name(cfg.name, m.label), m.joint_baseline,
                             startup_points=own_values(shared, m.space))
                for m in cfg.methods_resolved() if m.searched]
    if cfg.mode != "search":
        return []
    if cfg.searcher == "grid":
        return [MethodSearch("")]
    extra = {"loss_setting": list(cfg.loss_settings)} if len(cfg.loss_settings) > 1 else None
    return [MethodSearch("", {}, cfg.study_space(), base, cfg.num_samples, cfg.name, categoricals=extra,
                         startup_points=own_values(shared, cfg.study_space()))]


def shared_startup(cfg: StudyConfig) -> list[dict[str, Any]]:
    """The shared knobs' values for each method's start-up trials: one stratified design (`stratified_points`,
    seeded by `sampler_seed`) for all methods, so that every method tries the same spread of learning rates
    (paired across methods) and its own knobs at random; none for a sampler without a start-up phase."""
    startup = cfg.startup_trials()
    return stratified_points(cfg.shared(), min(startup, cfg.num_samples), cfg.sampler_seed) if startup else []


def own_values(points: list[dict[str, Any]], space: SearchSpace) -> list[dict[str, Any]]:
    """`points` restricted to the knobs `space` samples (a method that fixes a shared knob keeps its value)."""
    return [kept for kept in ({k: v for k, v in p.items() if k in space.params} for p in points) if kept]


def start_notes(cfg: StudyConfig) -> list[str]:
    """What a study should say when it starts: a budget that never leaves the sampler's random start-up, and
    the shared knobs that replaced a method's own definition."""
    notes = []
    startup = cfg.startup_trials()
    sampled = cfg.mode == "benchmark" or (cfg.mode == "search" and cfg.searcher != "grid")
    if sampled and startup is not None and cfg.num_samples <= startup:
        per = " per method" if cfg.mode == "benchmark" else ""
        notes.append(f"mmstudy: warning: searcher: {cfg.searcher} draws its first {startup} trials{per} at random "
                     f"(n_startup_trials) and the budget is {cfg.num_samples}{per}: this search never leaves start-up "
                     f"(raise num_samples or set searcher_options.n_startup_trials)")
    replaced = [m for m in cfg.methods_resolved() if m.replaced]
    if replaced:
        keys = sorted({k for m in replaced for k in m.replaced})
        notes.append(f"mmstudy: note: shared_space defines {', '.join(keys)} for every method; it replaces the own "
                     f"definition of: {', '.join(m.label for m in replaced)}")
    own = with_shared(cfg.space(), cfg.shared())[1] if cfg.mode == "search" else []
    if own:
        notes.append(f"mmstudy: note: shared_space defines {', '.join(own)}; it replaces search_space's own definition")
    return notes


# ----------------------------------------------------------------------------- the one searcher


class SearcherState(BaseModel):
    """The searcher's saved state: plain JSON (never pickle), checked field by field when read back."""
    model_config = ConfigDict(extra="forbid", strict=True)
    version: int
    planned: list[dict[str, Any]]
    remaining: dict[str, int]
    turn: int
    owner: dict[str, str]  # search trial id -> its method's key
    asked: dict[str, int]  # search trial id -> its Optuna trial number, until it ends
    open_search: dict[str, dict[str, Any]]  # search trial id -> its point, until it ends
    ended_search: dict[str, tuple[dict[str, float], dict[str, Any]]]  # id -> (ranking values, point)
    closed: list[str]  # methods whose search has ended (and whose confirmations were queued)
    confirmations: list[dict[str, Any]]


class StudySearcher(Searcher):
    """Planned trials first (baseline, grid points, fixed methods), then each method's confirmations once its
    own search has ended, then the methods' Optuna proposals in turn until each has had `num_samples`.

    Confirmation: a method's top-k ended search trials by the study's one ranking rule (study.ranking), re-trained
    with the confirmation seeds and tagged with their rank (`confirm_rank`; rank 1 is the reported
    configuration, the others a robustness check). Optuna hears only about its own trials; a diverged trial (it
    reports NaN and ends cleanly) is told as failed. Intermediate values are reported to Optuna while this
    driver runs (optuna-dashboard's curves); after a resume only the final ones.
    """

    def __init__(self, methods: list[MethodSearch], planned: list[dict[str, Any]] = (), seeds: list[int] = (0,),
                 top_k: int = 0, confirm_seeds: list[int] = (), metric: str | list[str] = "val_acc",
                 mode: str | list[str] = "max", epochs: int | None = None, study_dir: str | Path | None = None,
                 sampler: SamplerSpec | None = None, per_seed_keys: list[str] = ()):
        self.metrics = [metric] if isinstance(metric, str) else list(metric)
        self.modes = [mode] if isinstance(mode, str) else list(mode)
        super().__init__(metric=self.metrics[0], mode=self.modes[0])
        self.methods = {m.key: m for m in methods}
        self.seeds, self.top_k, self.confirm_seeds = list(seeds), top_k, list(confirm_seeds)
        self.epochs = epochs  # the trial budget: trials ASHA stopped before it rank after those that ran it
        self.study_dir = None if study_dir is None else str(study_dir)
        self.sampler = sampler or SamplerSpec()
        self.per_seed_keys = list(per_seed_keys)
        searched = {k: m.num_samples + sum(p["role"] == "search" and p.get(METHOD_KEY, "") == k for p in planned)
                    for k, m in self.methods.items()}
        self.planned_total = len(planned) + sum(m.num_samples for m in methods) + sum(
            min(top_k, n) for n in searched.values())
        self.state = SearcherState(version=STATE_VERSION, planned=list(planned),
                                   remaining={k: m.num_samples for k, m in self.methods.items()}, turn=0, owner={},
                                   asked={}, open_search={}, ended_search={}, closed=[], confirmations=[])
        self._studies: dict[str, Any] = {}  # method key -> optuna.Study, loaded from the journal when first used
        self._trials: dict[str, Any] = {}  # search trial id -> optuna.Trial asked by this driver

    @staticmethod
    def for_study(cfg: StudyConfig, study_dir: Path, out=None) -> "StudySearcher":
        """The study's searcher; says what `start_notes` finds."""
        for note in start_notes(cfg):
            print(note, file=out or sys.stderr, flush=True)
        return StudySearcher(method_searches(cfg), planned_trials(cfg), cfg.seeds,
                             cfg.confirm.top_k if cfg.confirming() else 0, cfg.confirm.seeds, cfg.metric.names,
                             cfg.metric.modes, cfg.trial_config().epochs, study_dir,
                             SamplerSpec(cfg.searcher, cfg.sampler_seed, cfg.sampler_options()), cfg.per_seed_keys())

    def __getstate__(self):  # Tune pickles the searcher it was given (tuner.pkl): no Optuna objects in it
        return {**self.__dict__, "_studies": {}, "_trials": {}}

    def total(self) -> int:
        """Trials the study runs (Tune's num_samples): the planned ones, num_samples per sampled method and
        min(top_k, its search trials) confirmations of each (fewer only when a method's every trial failed)."""
        return self.planned_total

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True  # metric, mode and spaces were given when the study was built

    # --- what to train next --------------------------------------------------------------------------------
    def suggest(self, trial_id: str):
        s = self.state
        if s.planned:
            spec = s.planned.pop(0)
            if spec["role"] == "search":
                self._opened(trial_id, spec.get(METHOD_KEY, ""), spec["point"])
            return self._with_seed_keys(spec)
        self._close_ended_methods()
        if s.confirmations:
            return self._with_seed_keys(s.confirmations.pop(0))
        key = self._next_method()
        if key is not None:
            return self._with_seed_keys(self._propose(trial_id, key))
        if len(s.closed) == len(self.methods):
            return Searcher.FINISHED
        return None  # a method's search is still running: its confirmation waits for it

    def _with_seed_keys(self, spec: dict[str, Any]) -> dict[str, Any]:
        return {**spec, "per_seed_keys": self.per_seed_keys} if self.per_seed_keys else spec

    def _opened(self, trial_id: str, key: str, point: dict[str, Any]) -> None:
        self.state.owner[trial_id] = key
        self.state.open_search[trial_id] = dict(point)

    def _next_method(self) -> str | None:
        keys, s = list(self.methods), self.state
        for step in range(len(keys)):
            key = keys[(s.turn + step) % len(keys)]
            if s.remaining.get(key, 0) > 0:
                s.turn = (s.turn + step + 1) % len(keys)
                return key
        return None

    def _propose(self, trial_id: str, key: str) -> dict[str, Any]:
        import optuna

        method, study = self.methods[key], self._study(key)
        finished = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,
                                                                optuna.trial.TrialState.PRUNED)))
        startup = self.sampler.startup is not None and finished < self.sampler.startup
        trial = study.ask()
        constants = define_by_run(method.space, method.base, method.categoricals)(trial)
        point = {**method.point, **trial.params, **constants}
        self.state.remaining[key] -= 1
        self.state.asked[trial_id] = trial.number
        self._trials[trial_id] = trial
        self._opened(trial_id, key, point)
        return trial_spec(point, "search", self.seeds, method=method.key or None,
                          startup=None if self.sampler.startup is None else int(startup),  # 0 is recorded too
                          joint_baseline=1 if method.joint_baseline else None)

    def _close_ended_methods(self) -> None:
        """A method whose proposals are all out and whose search trials have all ended is closed: its
        confirmations are queued (with top_k 0 it closes as soon as its proposals are out)."""
        s = self.state
        for key in self.methods:
            if key in s.closed or s.remaining.get(key, 0) > 0:
                continue
            if any(p["role"] == "search" and p.get(METHOD_KEY, "") == key for p in s.planned):
                continue
            if self.top_k and any(s.owner.get(t) == key for t in s.open_search):
                continue
            s.closed.append(key)
            if self.top_k:
                s.confirmations += self.top_configurations(key)

    def top_configurations(self, key: str = "") -> list[dict[str, Any]]:
        """A method's top-k ended search trials by the study's ranking rule (`top_trials`), among that method's
        trials only, re-trained with the confirmation seeds; `confirm_rank` is each one's rank."""
        s, method = self.state, self.methods.get(key, MethodSearch(key))
        ended = {t: values for t, (values, _) in s.ended_search.items() if s.owner.get(t, "") == key}
        return [trial_spec(s.ended_search[t][1], "confirm", self.confirm_seeds, confirms=t, method=key or None,
                           confirm_rank=rank, joint_baseline=1 if method.joint_baseline else None)
                for rank, t in enumerate(top_trials(ended, self.metrics, self.modes, self.epochs, self.top_k), 1)]

    # --- what Tune reports ---------------------------------------------------------------------------------
    def on_trial_result(self, trial_id: str, result: dict) -> None:
        trial = self._trials.get(trial_id)
        value = result.get(self.metrics[0])
        if trial is None or len(self.metrics) > 1 or not _finite(value) or result.get("diverged"):
            return
        from optuna.exceptions import UpdateFinishedTrialError

        try:
            trial.report(float(value), int(result.get("training_iteration", 0)))
        except UpdateFinishedTrialError:
            pass  # already recorded by a driver killed before Tune's snapshot; the trial goes on under Tune

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        s = self.state
        if trial_id in s.asked:
            self._tell(s.owner[trial_id], s.asked.pop(trial_id), result, error)
            self._trials.pop(trial_id, None)
        point = s.open_search.pop(trial_id, None)
        values = confirmable_values(result, self.metrics, error)
        if point is not None and values is not None:
            s.ended_search[trial_id] = (values, point)

    def _tell(self, key: str, number: int, result: dict | None, error: bool) -> None:
        """The trial's objective value(s) as reported (the metric as named, docs/ranking.md), or a failed
        Optuna trial when it errored, diverged or has no finite value. `skip_if_finished`: a trial a killed
        driver had already told is resumed by Tune and ends a second time."""
        import optuna

        values = [(result or {}).get(m) for m in self.metrics]
        failed = error or not result or result.get("diverged") or not all(_finite(v) for v in values)
        study = self._study(key)
        if failed:
            study.tell(number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
        else:
            study.tell(number, [float(v) for v in values] if len(values) > 1 else float(values[0]),
                       skip_if_finished=True)

    def _study(self, key: str):
        """The method's Optuna study on the study folder's journal (created, or loaded with what it holds)."""
        if key not in self._studies:
            import optuna
            from optuna.storages import JournalStorage
            from optuna.storages.journal import JournalFileBackend

            optuna.logging.set_verbosity(optuna.logging.WARNING)
            method = self.methods[key]
            storage = JournalStorage(JournalFileBackend(str(Path(self.study_dir) / OPTUNA_FILE)))
            directions = ["maximize" if m == "max" else "minimize" for m in self.modes]
            try:
                held = len(optuna.load_study(study_name=method.study_name, storage=storage).trials)
            except KeyError:
                held = 0
            self._studies[key] = optuna.create_study(
                storage=storage, study_name=method.study_name, sampler=self.sampler.build(held),
                directions=directions, load_if_exists=True)
            if not held:  # a new study: its first trials take the shared knobs' stratified values (kept in the journal)
                for point in method.startup_points:
                    self._studies[key].enqueue_trial(point)
        return self._studies[key]

    # --- saved with Tune's experiment ----------------------------------------------------------------------
    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "w") as fh:
            fh.write(self.state.model_dump_json())

    def restore(self, checkpoint_path: str) -> None:
        """The saved JSON state, checked; the Optuna studies are loaded again from the journal when next used.
        Anything else in the file (a pickle, another version's state) is a one-line error: never unpickled."""
        text = Path(checkpoint_path).read_bytes()
        try:
            state = SearcherState.model_validate_json(text)
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise ConfigError(f"study: the searcher state {checkpoint_path} is not this searcher's JSON state "
                              f"({where + ': ' if where else ''}{first['msg'][:120]}); it is never unpickled: "
                              f"was the study folder written by another version or altered? Nothing was "
                              f"changed") from None
        unknown = set(state.remaining) - set(self.methods)
        if state.version != STATE_VERSION or unknown:
            raise ConfigError(f"study: the searcher state {checkpoint_path} does not belong to this study "
                              f"(version {state.version}, methods {sorted(unknown)} unknown)")
        self.state, self._studies, self._trials = state, {}, {}


def check_saved_state(cfg: StudyConfig, tune_dir: Path) -> None:
    """Before a resume, the searcher state Tune will restore (its newest `searcher-state-*`) read as this study's
    searcher would: Tune restarts the whole experiment when a restore fails, so a state that is not ours must
    stop the resume here, a one-line error with nothing changed."""
    paths = [str(p) for p in Path(tune_dir).glob(Searcher.CKPT_FILE_TMPL.format("*"))]
    if not paths:
        raise ConfigError(f"study: '{tune_dir}' holds no searcher state to resume from")
    StudySearcher(method_searches(cfg)).restore(max(paths))  # Tune's choice of file (Searcher.restore_from_dir)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def confirmable_values(result: dict | None, metrics: list[str], error: bool = False) -> dict[str, float] | None:
    """An ended search trial's values for the ranking rule (each metric, its best_ value, the epochs it ran),
    or None when the trial is no confirmation candidate: it errored, diverged (study.status), or reported no
    finite value of the first metric. A diverged trial's best_ values are finite, but its configuration is
    not one to re-train."""
    from study.status import trial_status

    if error or not result or trial_status(result, 0)[0] == "diverged":
        return None
    keys = {*metrics, *(f"best_{m}" for m in metrics), "training_iteration"}
    values = {k: float(v) for k, v in result.items() if k in keys and _finite(v)}
    return values if metrics[0] in values else None


def top_trials(ended: dict[str, dict[str, float]], metrics: list[str], modes: list[str], epochs: int | None,
               top_k: int) -> list[str]:
    """The ids of the top-k ended search trials by the study's one ranking rule (`study.ranking.rank_trials`:
    the metric(s) at each trial's best validation epoch; complete trials before ASHA-stopped ones)."""
    import pandas as pd

    from study.ranking import rank_trials

    if not ended:
        return []
    rows = pd.DataFrame([{"trial_id": trial_id, **values} for trial_id, values in ended.items()])
    return list(rank_trials(rows, metrics, modes, epochs)["trial_id"].head(top_k))


def optuna_study_names(cfg: StudyConfig) -> list[str]:
    return [m.study_name for m in method_searches(cfg) if m.study_name]


def close_orphans(cfg: StudyConfig, study_dir: Path) -> int:
    """Every Optuna proposal still RUNNING once Tune's run has ended was never trained: proposals made after the
    searcher state a killed driver had saved. Marked failed here, at the end of the (resumed) run, and not on
    restore: there, the journal can hold trials newer than the restored searcher state that Tune still resumes,
    and failing them would make Optuna refuse their results. Returns how many were closed."""
    path = Path(study_dir) / OPTUNA_FILE
    if not path.is_file():
        return 0
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage, closed = JournalStorage(JournalFileBackend(str(path))), 0
    for name in optuna_study_names(cfg):
        try:
            study = optuna.load_study(study_name=name, storage=storage)
        except KeyError:  # never created (the driver died before this method's first trial)
            continue
        running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        for trial in running:
            study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
        closed += len(running)
    return closed


# ----------------------------------------------------------------------------- ASHA, one per method


class StudyASHA(ASHAScheduler):
    """ASHA over the search's own trials; baseline and confirmation trials always run their full budget and
    never move a rung's cut-off."""

    def on_trial_result(self, tune_controller, trial, result):
        if trial.config.get("role") not in OWN_ROLES:
            return TrialScheduler.CONTINUE
        return super().on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller, trial, result):
        if trial.config.get("role") in OWN_ROLES:
            super().on_trial_complete(tune_controller, trial, result)


class MethodASHA(FIFOScheduler):
    """ASHA with the study's settings, one instance per method: a search trial is compared only with the
    trials of its own method (a search study has one). Baseline and confirmation trials run their full budget."""

    def __init__(self, **asha: Any):
        super().__init__()
        self.asha, self.by_method, self.properties = asha, {}, {}

    def _for(self, trial) -> StudyASHA:
        label = trial.config.get(METHOD_KEY, "")
        if label not in self.by_method:
            scheduler = StudyASHA(**self.asha)
            if self.properties:
                scheduler.set_search_properties(**self.properties)
            self.by_method[label] = scheduler
        return self.by_method[label]

    def set_search_properties(self, metric, mode, **spec) -> bool:
        self.properties = {"metric": metric, "mode": mode, **spec}
        for scheduler in self.by_method.values():
            scheduler.set_search_properties(metric, mode, **spec)
        return True

    def on_trial_add(self, tune_controller, trial):
        self._for(trial).on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result):
        return self._for(trial).on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller, trial, result):
        self._for(trial).on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller, trial):
        self._for(trial).on_trial_remove(tune_controller, trial)

    def debug_string(self) -> str:
        return "\n".join(f"{label or 'study'}: {s.debug_string()}" for label, s in self.by_method.items())


def asha_rungs(epochs: int, grace_period: int, reduction_factor: float) -> tuple[int, ...]:
    """The epochs at which Ray's ASHAScheduler (one bracket, as `scheduler_for` builds it) judges a trial: rung k
    at grace_period * reduction_factor**k for int(log(max_t / grace) / log(factor) + 1) rungs, judged at the first
    epoch at or past it. A rung at the budget itself stops nothing, so only those below it. One home for the
    console's ETA and the report's common fidelity."""
    grace = min(grace_period, epochs)
    count = int(math.log(epochs / grace) / math.log(reduction_factor) + 1)
    return tuple(sorted({math.ceil(grace * reduction_factor ** k) for k in range(count)
                         if grace * reduction_factor ** k < epochs}))


def scheduler_for(cfg: StudyConfig):
    """ASHA per method for a sampled search or a benchmark (grids, sensitivity sweeps and comparisons run every
    point fully)."""
    if cfg.scheduler != "asha" or cfg.mode not in ("search", "benchmark") or cfg.searcher == "grid":
        return None
    epochs = cfg.trial_config().epochs
    return MethodASHA(time_attr="training_iteration", max_t=epochs, grace_period=min(cfg.asha.grace_period, epochs),
                      reduction_factor=cfg.asha.reduction_factor)


class TrialName:
    """Trial names and folders that carry the study's name and the trial's role (picklable for Tune)."""

    def __init__(self, study_name: str, sep: str = "-"):
        self.study_name, self.sep = study_name, sep

    def __call__(self, trial) -> str:
        return self.sep.join((self.study_name, trial.config.get("role", "trial"), trial.trial_id))
