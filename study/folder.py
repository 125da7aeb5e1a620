"""A study folder on disk (STORAGE_PATH/NAME), read as JSON only; whether to trust it is `study.trust`.

  study.json      the snapshot (resolved study config with the search space inlined), MLflow ids, status, and
                  at the end the trial counts and the best trial -- what `resume`, `list`, `report`, `sync` read
  study.yaml      the snapshot as YAML, also an artifact of the parent run (`report <experiment>` reads it)
  tune/           Tune's experiment: `Tuner.restore` unpickles it (resume only). Everything else here reads
                  its JSON files only: experiment_state-*.json with json.loads (the cloudpickle blobs inside stay
                  inert strings), each trial folder's params.json and result.json.
  optuna.journal  the Optuna study of a sampled search (`optuna.load_study`, optuna-dashboard)
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from study.config import StudyConfig, load_study_config
from study.credentials import adopt
from study.trust import check_trusted
from trainables.balancers.plugin_trust import PluginRefused, config_from_record
from trainables.errors import ConfigError

STUDY_FILE = "study.json"
SNAPSHOT_ARTIFACT = "study.yaml"
TUNE_DIR = "tune"
TUNE_STATE_GLOB = "experiment_state-*.json"
# study.json's fields that every command relies on, and their JSON types
REQUIRED = {"name": str, "config": dict, "tracking_uri": str, "experiment_id": str, "parent_run_id": str}


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    """Write JSON so a reader (or a killed writer) never sees half a file; NumPy/torch scalars as numbers."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(payload, fh, indent=2, default=lambda v: v.item() if hasattr(v, "item") else str(v))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass
class Study:
    """A study's folder and what study.json holds; `config` is the snapshot, validated."""
    dir: Path
    info: dict[str, Any]

    @cached_property
    def config(self) -> StudyConfig:
        return validated_config(self.info["config"], str(self.dir / STUDY_FILE))

    @property
    def name(self) -> str:
        return self.info["name"]

    @property
    def tune_dir(self) -> Path:
        return self.dir / TUNE_DIR

    def save(self) -> None:
        write_json_atomic(self.dir / STUDY_FILE, self.info)


def validated_config(raw: Any, source: str) -> StudyConfig:
    """A study snapshot read from a record (study.json, a parent run's study.yaml), validated whole: one line
    naming the record when it is not a valid study config. Records are data: no plug-in they name is imported
    unasked (trainables.balancers.plugin_trust)."""
    with config_from_record(source):
        try:
            return load_study_config(None, raw=raw)
        except PluginRefused:
            raise
        except ConfigError as err:
            raise ConfigError(f"study: '{source}' holds no valid study config ({err})") from None


def read_info(study_dir: Path) -> dict[str, Any]:
    """study.json, checked: readable, JSON, a mapping with the fields every command uses (one-line ConfigError
    otherwise: a truncated or hand-edited file is never a traceback)."""
    path = study_dir / STUDY_FILE
    try:
        info = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ConfigError(f"study: '{path}' is not readable JSON ({type(err).__name__}: "
                          f"{str(err).splitlines()[0][:120] if str(err) else 'empty'}); truncated or edited?") from None
    if not isinstance(info, dict):
        raise ConfigError(f"study: '{path}' is not a study snapshot (a JSON {type(info).__name__}, expected a mapping)")
    for key, kind in REQUIRED.items():
        if not isinstance(info.get(key), kind):
            got = "missing" if key not in info else f"a {type(info[key]).__name__}"
            raise ConfigError(f"study: '{path}' field '{key}' is {got} (expected a {kind.__name__})")
    return info


def open_study(study_dir: str | Path, shared_group: str | None = None) -> Study:
    """A study folder the user may read: it exists, passes the trust rule (`study.trust`), holds a valid
    study.json. `shared_group`: the group the user trusts to have written it too (`--shared-group`)."""
    path = Path(study_dir).resolve()
    if not (path / STUDY_FILE).is_file():
        raise ConfigError(f"study: '{study_dir}' is not a study folder (no {STUDY_FILE}); see `mmstudy list`")
    check_trusted(path, shared_group)
    study = Study(path, read_info(path))
    study.info["tracking_uri"] = adopt(study.info["tracking_uri"])  # one written before credentials were cut out
    return study


# ----------------------------------------------------------------------------- Tune's files, as JSON


@dataclass
class TuneTrial:
    """One trial as Tune's experiment state records it (plain JSON fields only) and its folder's files."""
    trial_id: str
    status: str
    folder: Path
    config: dict[str, Any]
    last_result: dict[str, Any]
    error_file: Path | None

    def results(self) -> list[dict[str, Any]]:
        return trial_results(self.folder)

    def last_checkpoint(self) -> Path | None:
        """The trial's newest checkpoint folder (Tune names them checkpoint_000000, checkpoint_000001, ...)."""
        folders = sorted(p for p in self.folder.glob("checkpoint_*") if p.is_dir()) if self.folder.is_dir() else []
        return folders[-1] if folders else None


def tune_state_files(tune_dir: Path) -> list[Path]:
    """Tune's experiment state files, oldest first (Tune restores from the newest: the largest name)."""
    return sorted(Path(tune_dir).glob(TUNE_STATE_GLOB)) if Path(tune_dir).is_dir() else []


def read_tune_state(path: Path) -> list[TuneTrial]:
    """The trials of one experiment state file, parsed with json.loads only (never Tune's decoder, which would
    expand the cloudpickle blobs). A truncated or foreign file is a one-line ConfigError."""
    try:
        state = json.loads(path.read_text())
        trials = []
        for trial_json, metadata_json in state["trial_data"]:
            trial, metadata = json.loads(trial_json), json.loads(metadata_json)
            folder = path.parent / str(trial["relative_logdir"])
            error = metadata.get("error_filename")
            config = trial.get("config") if isinstance(trial.get("config"), dict) else {}
            trials.append(TuneTrial(str(trial["trial_id"]), str(trial["status"]), folder,
                                    config or trial_params(folder), metadata.get("last_result") or {},
                                    folder / error if isinstance(error, str) else None))
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"study: Tune's experiment state '{path}' is unreadable ({type(err).__name__}); truncated "
                          f"or from another Ray version?") from None
    return trials


def tune_trials(tune_dir: Path) -> list[TuneTrial]:
    """The trials of the newest experiment state: the ones Tune will restore and `sync` replays."""
    files = tune_state_files(tune_dir)
    return read_tune_state(files[-1]) if files else []


def trial_ids_ever(tune_dir: Path) -> set[str]:
    """Every trial id in any experiment state file in the folder (an unreadable one adds none)."""
    ids: set[str] = set()
    for path in tune_state_files(tune_dir):
        try:
            ids |= {t.trial_id for t in read_tune_state(path)}
        except ConfigError:
            continue
    return ids


def trial_params(folder: Path) -> dict[str, Any]:
    """A trial folder's params.json (its Tune config), {} when absent or unreadable."""
    try:
        params = json.loads((Path(folder) / "params.json").read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return {}
    return params if isinstance(params, dict) else {}


def trial_results(folder: Path) -> list[dict[str, Any]]:
    """A trial folder's results (result.json, one JSON object per reported epoch); a line cut short by a killed
    writer ends the list."""
    path = Path(folder) / "result.json"
    rows = []
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError):
        return rows
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            break
        if isinstance(row, dict):
            rows.append(row)
    return rows


def trial_folders(tune_dir: Path) -> list[Path]:
    """Trial folders on disk (a params.json each), also those of trials newer than the last experiment state."""
    return sorted(p.parent for p in Path(tune_dir).glob("*/params.json")) if Path(tune_dir).is_dir() else []
