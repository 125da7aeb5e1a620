"""A study folder is code to Ray, so mmstudy reads only folders the user trusts (study.trust), reads everything but
`resume`'s restore as JSON (study.folder), and deletes nothing it did not make: a second user's planted pickles,
a corrupt study.json, a failed start in an existing folder, a restore that lost trials, a `report` tag that names
someone else's folder and a `sync` run from another folder. Tests run as root here: root can chmod and chown to
another uid/gid, which is what a second user's folder looks like."""
import grp
import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from study.cli import main
from study.config import load_study_config

TINY_TRIAL = {"epochs": 3, "dataset": {"name": "synthetic", "size": "tiny", "n_train": 96, "n_val": 48, "n_test": 48},
              "model": {"feature_dim": 8}, "optim": {"batch_size": 32}}
OTHER_ID = 54321  # a uid and gid no account here has: "another user", "another group"
MARKER = "planted-code-ran"


def study_raw(tmp_path, name, **extra):
    raw = {"name": name, "trial": TINY_TRIAL, "storage_path": str(tmp_path / "runs"),
           "tracking_uri": f"sqlite:///{tmp_path}/mlflow.db", "num_samples": 2, "max_concurrent": 2,
           "search_space": "redreg", "baseline": {"enabled": False}, "confirm": {"top_k": 0}}
    raw.update(extra)
    return raw


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory) -> Path:
    """An MLflow SQLite store with its tables made once (seconds), copied into each test's folder."""
    path = tmp_path_factory.mktemp("store") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture(autouse=True)
def store_here(tmp_path, empty_store):
    shutil.copy(empty_store, tmp_path / "mlflow.db")


def make_records(tmp_path, name="s", shared_group=None, **extra):
    """A study's records (folder, snapshot, parent run) as `mmstudy run` makes them, without running it."""
    from study import records

    return records.start(load_study_config(None, raw=study_raw(tmp_path, name, **extra)), shared_group=shared_group)


class Planted:
    """Unpickling it creates the marker file: the stand-in for an attacker's code."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def plant_tune_dir(study_dir: Path, marker: Path) -> None:
    """Tune's files as a second user would plant them: every pickle Tune's restore reads runs the payload, and
    the experiment state (JSON) carries it as a cloudpickle blob; one trial with a reported epoch."""
    payload = pickle.dumps(Planted(marker))
    tune = study_dir / "tune"
    tune.mkdir()
    for name in ("tuner.pkl", "searcher-state-2026-01-01_00-00-00.pkl", "search_gen_state-2026-01-01_00-00-00.json"):
        (tune / name).write_bytes(payload)
    blob = {"_type": "CLOUDPICKLE_FALLBACK", "value": payload.hex()}
    spec = {"point": {}, "role": "search", "seeds": [0]}
    trial = {"trial_id": "t1", "status": "TERMINATED", "relative_logdir": "s_search_t1", "config": spec,
             "storage": blob, "trial_name_creator": blob}
    result = {"trial_id": "t1", "training_iteration": 1, "val_acc": 0.5, "best_val_acc": 0.5, "config": spec}
    state = {"trial_data": [[json.dumps(trial), json.dumps({"last_result": result, "error_filename": None,
                                                            "metric_n_steps": {"val_acc": {"5": blob}}})]],
             "runner_data": {"_stopper": blob}, "stats": {}}
    (tune / "experiment_state-2026-01-01_00-00-00.json").write_text(json.dumps(state))
    (tune / "s_search_t1").mkdir()
    (tune / "s_search_t1" / "params.json").write_text(json.dumps(spec))
    (tune / "s_search_t1" / "result.json").write_text(json.dumps(result) + "\n")


def test_the_planted_payload_is_live(tmp_path):
    """The control for every test below: unpickling what was planted does run code."""
    marker = tmp_path / MARKER
    plant_tune_dir(tmp_path, marker)
    pickle.loads((tmp_path / "tune" / "tuner.pkl").read_bytes())
    assert marker.exists()
    marker.unlink()
    state = json.loads(next((tmp_path / "tune").glob("experiment_state-*")).read_text())
    pickle.loads(bytes.fromhex(json.loads(state["trial_data"][0][0])["storage"]["value"]))
    assert marker.exists()


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.stat().st_size if p.is_file() else None, p.stat().st_mode, p.stat().st_uid)
            for p in [folder, *sorted(folder.rglob("*"))]}


def one_error_line(capsys, *fragments) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mmstudy: error: "), err
    for fragment in fragments:
        assert fragment in err[0], err[0]
    return err[0]


def _chmod(path, mode):
    os.chmod(path, mode)


# Each way a second user can have written the folder; the folder's own mode first, then what it makes reachable.
UNTRUSTED = {
    "folder writable by every user": (lambda s: _chmod(s, 0o777), "writable by every user (mode 0777)"),
    "folder writable by another group": (lambda s: (os.chown(s, -1, OTHER_ID), _chmod(s, 0o770)),
                                         f"writable by group '{OTHER_ID}'"),
    "folder owned by another user": (lambda s: os.chown(s, OTHER_ID, -1), f"is owned by user '{OTHER_ID}'"),
    "tune/ writable by every user in an open folder": (lambda s: (_chmod(s, 0o755), _chmod(s / "tune", 0o777)),
                                                       "tune' is writable by every user"),
    "tuner.pkl owned by another user in an open folder": (
        lambda s: (_chmod(s, 0o755), os.chown(s / "tune" / "tuner.pkl", OTHER_ID, -1)),
        f"tuner.pkl' is owned by user '{OTHER_ID}'"),
    "study.json writable by another group in an open folder": (
        lambda s: (_chmod(s, 0o755), os.chown(s / "study.json", -1, OTHER_ID), _chmod(s / "study.json", 0o660)),
        f"study.json' is writable by group '{OTHER_ID}'"),
    "a trial's result.json writable by every user in an open folder": (
        lambda s: (_chmod(s, 0o755), _chmod(s / "tune" / "s_search_t1" / "result.json", 0o666)),
        "result.json' is writable by every user"),
    "storage path writable by every user, not sticky": (lambda s: _chmod(s.parent, 0o777),
                                                        "the storage path"),
    "storage path in a folder writable by every user, not sticky": (lambda s: _chmod(s.parent.parent, 0o777),
                                                                    "(above the storage path) is writable by every"),
    "storage path in a folder owned by another user": (lambda s: os.chown(s.parent.parent, OTHER_ID, -1),
                                                       f"(above the storage path) belongs to {OTHER_ID}"),
}


@pytest.mark.parametrize("how", list(UNTRUSTED))
def test_an_untrusted_study_folder_is_refused_before_anything_is_read(tmp_path, capsys, monkeypatch, how):
    monkeypatch.chdir(tmp_path)
    study = make_records(tmp_path)
    marker = tmp_path / MARKER
    plant_tune_dir(study.dir, marker)
    make_untrusted, fragment = UNTRUSTED[how]
    make_untrusted(study.dir)
    before = snapshot(tmp_path / "runs")
    client = MlflowClient(study.info["tracking_uri"])
    capsys.readouterr()  # MLflow's own log of creating the store
    for command in (["resume"], ["sync"], ["report"], ["ui"]):
        assert main([*command, str(study.dir)]) == 2, command
        one_error_line(capsys, "mmstudy: error: study: ", fragment, "use only your own")
    if how.startswith("storage path"):  # `list` reads every folder of that storage path: refused as a whole
        assert main(["list", "--storage-path", str(tmp_path / "runs")]) == 2
        one_error_line(capsys, fragment)
    else:  # one bad folder does not break the list: a note, and the trusted study next to it is listed
        make_records(tmp_path, "mine")
        capsys.readouterr()
        assert main(["list", "--storage-path", str(tmp_path / "runs")]) == 0
        out = capsys.readouterr()
        notes = out.err.strip().splitlines()
        assert len(notes) == 1 and notes[0].startswith(f"mmstudy: note: skipped '{study.dir}'") and fragment in notes[0]
        assert "mine" in out.out and f"{study.dir}\n" not in out.out
        shutil.rmtree(tmp_path / "runs" / "mine")
    assert not marker.exists()
    assert snapshot(tmp_path / "runs") == before
    assert not (study.dir / "report").exists()
    assert client.get_run(study.info["parent_run_id"]).data.tags["mmstudy.status"] == "running"


def test_new_study_folders_are_private(tmp_path):
    study = make_records(tmp_path)
    assert study.dir.stat().st_mode & 0o7777 == 0o700


def test_a_trusted_folder_is_listed_and_synced_from_json_only(tmp_path, capsys):
    """`list` and `sync` never unpickle, even in the user's own folder: Tune's pickles and the cloudpickle blobs
    inside its experiment state are never loaded."""
    study = make_records(tmp_path)
    marker = tmp_path / MARKER
    plant_tune_dir(study.dir, marker)
    capsys.readouterr()
    assert main(["list", "--storage-path", str(tmp_path / "runs")]) == 0
    listed = capsys.readouterr().out
    assert "s " in listed and " 1     1 " in listed, listed  # 1 trial, 1 with results
    assert main(["sync", str(study.dir)]) == 0
    assert "synced 1 trials into MLflow" in capsys.readouterr().out
    assert not marker.exists()
    client = MlflowClient(study.info["tracking_uri"])
    [run] = client.search_runs([study.info["experiment_id"]],
                               filter_string=f"tags.`mlflow.parentRunId` = '{study.info['parent_run_id']}'")
    assert run.data.tags["mmstudy.trial_id"] == "t1" and run.data.metrics["val_acc"] == 0.5


def other_group() -> grp.struct_group | None:
    """A real group that is not root's private group, for --shared-group (root may name any group)."""
    return next((g for g in grp.getgrall() if g.gr_gid != 0), None)


@pytest.mark.skipif(os.geteuid() != 0 or other_group() is None, reason="needs root and a second group")
def test_a_shared_study_is_read_only_by_those_who_name_its_group(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    group = other_group().gr_name
    study = make_records(tmp_path, shared_group=group)
    st = study.dir.stat()
    assert st.st_gid == other_group().gr_gid and st.st_mode & 0o7777 == 0o2770
    assert json.loads((study.dir / "study.json").read_text())["shared_group"] == group
    capsys.readouterr()
    assert main(["resume", str(study.dir)]) == 2
    one_error_line(capsys, f"writable by group '{group}'", f"--shared-group {group}")
    assert main(["resume", str(study.dir), "--shared-group", group]) == 2  # trusted: on to the next check
    one_error_line(capsys, "has no restorable Tune experiment")
    assert main(["sync", str(study.dir), "--shared-group", group]) == 2
    one_error_line(capsys, "has no Tune experiment (tune/) to sync")
    assert main(["list", "--storage-path", str(tmp_path / "runs")]) == 0
    assert "skipped" in capsys.readouterr().err
    assert main(["list", "--storage-path", str(tmp_path / "runs"), "--shared-group", group]) == 0
    out = capsys.readouterr()
    assert not out.err and str(study.dir) in out.out
    assert main(["resume", str(study.dir), "--shared-group", "no-such-group-here"]) == 2
    one_error_line(capsys, "--shared-group: no group 'no-such-group-here'")


CORRUPT = {
    "truncated": lambda text: text[: len(text) // 2],
    "not JSON": lambda text: "name: s\n",
    "a JSON list": lambda text: "[1, 2]",
    "name of the wrong type": lambda text: json.dumps({**json.loads(text), "name": 3}),
    "no config": lambda text: json.dumps({k: v for k, v in json.loads(text).items() if k != "config"}),
}


@pytest.mark.parametrize("how", list(CORRUPT))
def test_a_corrupt_study_json_is_one_line(tmp_path, capsys, monkeypatch, how):
    monkeypatch.chdir(tmp_path)
    study = make_records(tmp_path)
    path = study.dir / "study.json"
    path.write_text(CORRUPT[how](path.read_text()))
    (study.dir / "tune").mkdir()
    before = snapshot(study.dir)
    capsys.readouterr()
    for command in ("resume", "sync", "report"):
        assert main([command, str(study.dir)]) == 2, command
        one_error_line(capsys, f"study: '{path}'")
    make_records(tmp_path, "fine")
    capsys.readouterr()
    assert main(["list", "--storage-path", str(tmp_path / "runs")]) == 0
    out = capsys.readouterr()
    assert out.err.strip().startswith(f"mmstudy: note: skipped '{study.dir}': study: '{path}'")
    assert len(out.err.strip().splitlines()) == 1 and "fine" in out.out
    assert snapshot(study.dir) == before


def test_a_study_json_whose_config_is_invalid_is_one_line(tmp_path, capsys):
    study = make_records(tmp_path)
    info = json.loads((study.dir / "study.json").read_text())
    info["config"]["num_samples"] = -1
    info["config"]["asha"] = {"grace_period": 0}  # read by the report's figures: checked before, never a traceback
    (study.dir / "study.json").write_text(json.dumps(info))
    capsys.readouterr()
    for command in ("resume", "report"):
        assert main([command, str(study.dir)]) == 2
        one_error_line(capsys, "holds no valid study config", "asha.grace_period")
    assert main(["list", "--storage-path", str(tmp_path / "runs")]) == 0
    assert "holds no valid study config" in capsys.readouterr().err


# ----------------------------------------------------------------------------- nothing deleted that we did not make


def existing_folder(tmp_path) -> tuple[Path, dict]:
    folder = tmp_path / "runs" / "s"
    (folder / "data").mkdir(parents=True)
    (folder / "notes.txt").write_text("mine")
    (folder / "data" / "x.bin").write_bytes(b"\0" * 100)
    os.chmod(folder, 0o750)
    return folder, snapshot(folder)


def parent_runs(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.get_experiment_by_name("mmstudy/s")
    return client.search_runs([exp.experiment_id]) if exp else []


def test_a_start_that_fails_in_an_existing_folder_leaves_it_and_its_files(tmp_path):
    from study import records

    folder, before = existing_folder(tmp_path)
    cfg = load_study_config(None, raw=study_raw(tmp_path, "s"))
    with pytest.raises(Exception):
        records.start(cfg, config_path=str(tmp_path / "no-such-config.yaml"))  # fails after the snapshot is written
    assert snapshot(folder) == before and not parent_runs(tmp_path)


def test_a_start_interrupted_in_an_existing_folder_leaves_it_and_its_files(tmp_path, monkeypatch):
    from study import folder as study_folder
    from study import records

    folder, before = existing_folder(tmp_path)
    cfg = load_study_config(None, raw=study_raw(tmp_path, "s"))

    def interrupted(self):
        (self.dir / "study.json").write_text("{")  # Ctrl-C in the middle of the last write
        raise KeyboardInterrupt

    monkeypatch.setattr(study_folder.Study, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        records.start(cfg)
    assert snapshot(folder) == before and not parent_runs(tmp_path)


def test_a_start_that_fails_removes_the_folders_it_made(tmp_path):
    from study import records

    cfg = load_study_config(None, raw=study_raw(tmp_path, "s", storage_path=str(tmp_path / "new" / "runs")))
    with pytest.raises(Exception):
        records.start(cfg, config_path=str(tmp_path / "no-such-config.yaml"))
    assert not (tmp_path / "new").exists() and not parent_runs(tmp_path)


def test_a_folder_that_holds_what_mmstudy_writes_is_not_taken_over(tmp_path, capsys):
    from study import records

    folder, _ = existing_folder(tmp_path)
    (folder / "tune").mkdir()
    with pytest.raises(Exception, match="already holds tune but no study.json"):
        records.check_new(load_study_config(None, raw=study_raw(tmp_path, "s")))


def test_orphan_clean_up_spares_recorded_trials_and_runs_with_results(tmp_path):
    """Only a run with no result, of a trial no experiment state ever recorded, is deleted."""
    from study.search import trial_spec
    from study.tracking import TrialWriter

    study = make_records(tmp_path)
    plant_tune_dir(study.dir, tmp_path / MARKER)  # its experiment state records trial t1
    writer = TrialWriter(study)
    spec = trial_spec({}, "search", [0])
    runs = {trial: writer.run_for(trial, spec) for trial in ("now_1", "t1", "logged_3", "lost_4")}
    writer.log_result("logged_3", spec, {"training_iteration": 1, "val_acc": 0.4})
    assert writer.remove_orphans({"now_1"}) == 1
    client = MlflowClient(study.info["tracking_uri"])
    state = {trial: client.get_run(run_id) for trial, run_id in runs.items()}
    assert state["lost_4"].info.lifecycle_stage == "deleted"
    for kept in ("now_1", "t1", "logged_3"):
        assert state[kept].info.lifecycle_stage == "active", kept
    assert state["t1"].info.status == "RUNNING" and state["t1"].data.tags["mmstudy.status"] == "running"
    assert state["logged_3"].data.tags["mmstudy.status"] == "orphaned" and state["logged_3"].info.status == "KILLED"
    assert not (tmp_path / MARKER).exists()


def test_report_of_an_experiment_name_never_writes_where_a_tag_points(tmp_path, monkeypatch):
    """Anyone who can write to a shared tracking server can set a run's `mmstudy.study_dir` tag: `report NAME`
    writes to ./report/NAME (or --out), never there."""
    from study.search import trial_spec
    from study.tracking import TrialWriter

    victim = tmp_path / "victim"
    victim.mkdir()
    study = make_records(tmp_path)
    writer = TrialWriter(study)
    for trial, acc in (("a", 0.6), ("b", 0.5)):
        spec = trial_spec({"balancer.gamma": acc}, "search", [0])
        for epoch in (1, 2, 3):
            writer.log_result(trial, spec, {"training_iteration": epoch, "val_acc": acc, "best_val_acc": acc,
                                            "test_acc": acc, "best_test_acc": acc, "best_test_acc/seed_0": acc})
        writer.close(trial, spec, "finished", "", {"best_test_acc/seed_0": acc, "best_val_acc/seed_0": acc})
    client = MlflowClient(study.info["tracking_uri"])
    client.set_tag(study.info["parent_run_id"], "mmstudy.study_dir", str(victim))
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    assert main(["report", "mmstudy/s", "--tracking-uri", study.info["tracking_uri"], "--no-mlflow"]) == 0
    assert list(victim.iterdir()) == []
    assert (cwd / "report" / "mmstudy_s" / "report.md").is_file()


def test_sync_from_another_folder_opens_the_studys_store_and_creates_none(tmp_path, capsys, monkeypatch):
    """The default store (`sqlite:///mlflow.db`) is made absolute when the study starts; an older study.json
    with the relative form is one line, never a new empty store where the command runs."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    started, elsewhere = tmp_path / "started_here", tmp_path / "elsewhere"
    started.mkdir()
    elsewhere.mkdir()
    shutil.copy(tmp_path / "mlflow.db", started / "mlflow.db")
    monkeypatch.chdir(started)
    study = make_records(tmp_path, tracking_uri=None)
    assert study.info["tracking_uri"] == f"sqlite:///{started}/mlflow.db"
    assert json.loads((study.dir / "study.json").read_text())["config"]["tracking_uri"] == study.info["tracking_uri"]
    plant_tune_dir(study.dir, tmp_path / MARKER)
    monkeypatch.chdir(elsewhere)
    capsys.readouterr()
    assert main(["sync", str(study.dir)]) == 0
    assert f"({study.info['tracking_uri']})" in capsys.readouterr().out
    info = json.loads((study.dir / "study.json").read_text())
    info["tracking_uri"] = "sqlite:///mlflow.db"  # as studies started before this change kept it
    (study.dir / "study.json").write_text(json.dumps(info))
    for command in ("sync", "resume", "report"):
        assert main([command, str(study.dir)]) == 2, command
        one_error_line(capsys, "tracking_uri: no MLflow store at 'sqlite:///mlflow.db'")
    assert list(elsewhere.iterdir()) == []
    assert not (tmp_path / MARKER).exists()


# ----------------------------------------------------------------------------- a restore that loses trials (Ray)


@pytest.fixture(scope="module")
def finished_study(tmp_path_factory, ray_local):
    """A tiny finished search (2 trials, 1 epoch), run once for the restore tests."""
    from study.runner import run_study

    tmp_path = tmp_path_factory.mktemp("restore")
    cfg = load_study_config(None, raw=study_raw(tmp_path, "lost", scheduler="none", trial=dict(TINY_TRIAL, epochs=1)))
    run_study(cfg)
    return cfg


def mlflow_state(cfg) -> dict:
    info = json.loads((cfg.study_dir() / "study.json").read_text())
    client = MlflowClient(info["tracking_uri"])
    runs = client.search_runs([info["experiment_id"]], run_view_type=3)  # active and deleted
    return {r.info.run_id: (r.info.lifecycle_stage, r.info.status, r.data.tags.get("mmstudy.status")) for r in runs}


@pytest.mark.integration
def test_a_restore_that_loses_trials_stops_and_deletes_nothing(finished_study, capsys, monkeypatch):
    """Tune starts a study over when it cannot restore it (a damaged searcher state, an upgrade of Ray or Optuna
    between run and resume): the resume stops before anything is trained or deleted, one line, exit 2. A damaged
    searcher state is caught before Tune reads it (`check_saved_state`); with that check bypassed, as for a
    failure it cannot foresee, the restore-completeness check (`tracking.check_restored`) stops it instead."""
    cfg = finished_study
    tune_dir = cfg.study_dir() / "tune"
    runs_before = mlflow_state(cfg)
    assert len(runs_before) == 3 and all(stage == "active" for stage, _, _ in runs_before.values())
    trials_before = sorted(p.name for p in tune_dir.iterdir() if p.is_dir())
    capsys.readouterr()
    for damaged in (next(tune_dir.glob("searcher-state-*")), next(tune_dir.glob("experiment_state-*"))):
        kept = damaged.read_bytes()
        damaged.write_bytes(kept[: len(kept) // 2])
        assert main(["resume", str(cfg.study_dir())]) == 2
        err = capsys.readouterr().err
        last = err.strip().splitlines()[-1]
        assert last.startswith("mmstudy: error: study: "), err[-3000:]
        if damaged.name.startswith("searcher"):
            assert "is not this searcher's JSON state" in last and "Nothing was changed" in last, last
            with monkeypatch.context() as bypass:
                bypass.setattr("study.search.check_saved_state", lambda cfg, tune_dir: None)
                assert main(["resume", str(cfg.study_dir())]) == 2
            err = capsys.readouterr().err
            last = err.strip().splitlines()[-1]
            assert "Tune restored 0 of the 2 trials" in last and "MLflow untouched" in last, last
        else:
            assert "experiment state" in last and "unreadable" in last, last
        assert "Traceback" not in err, err[-3000:]
        assert mlflow_state(cfg) == runs_before
        assert sorted(p.name for p in tune_dir.iterdir() if p.is_dir()) == trials_before
        damaged.write_bytes(kept)
    assert main(["resume", str(cfg.study_dir())]) == 0  # the intact folder still resumes, and nothing is lost
    assert {k: v for k, v in mlflow_state(cfg).items() if k in runs_before} == runs_before


@pytest.mark.integration
def test_the_searcher_state_is_json(finished_study):
    path = next((finished_study.study_dir() / "tune").glob("searcher-state-*"))
    json.loads(path.read_text())
