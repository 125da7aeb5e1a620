"""Runs are data, not code: a balancer plug-in path (`pkg.mod:Class`) named by a record this command did not
create -- an MLflow run's tags (`debug --from-run`), a study folder's study.json (`resume`, `sync`, `list`) -- is
not imported unless the user says `--allow-plugin`; the same path on the user's own command line still is.

The plug-in here is a canary: a module that writes a file when it is imported, so each test sees whether any
code from the record ran, not only what was printed."""
from __future__ import annotations

import json
import uuid

import pytest
from mlflow.tracking import MlflowClient

from study.cli import main


@pytest.fixture
def canary(tmp_path, monkeypatch):
    """(plug-in path, marker file): importing the module writes the marker. A fresh module name per test, so an
    import by an earlier test cannot hide one."""
    name = f"canary_{uuid.uuid4().hex[:8]}"
    marker = tmp_path / "imported"
    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / f"{name}.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\nclass Balancer:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path / "mods"))
    return f"{name}:Balancer", marker


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """One SQLite store for the module (creating one costs seconds): each test makes its own runs in it."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('store')}/mlflow.db"
    MlflowClient(uri).create_experiment("shared")
    return uri


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mmstudy: error: "), err
    return err[0]


def trial_run(uri: str, config: dict) -> str:
    """A run as anyone with write access to the tracking server can make one: tags of a trial, set by hand."""
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("shared").experiment_id
    return client.create_run(experiment, tags={"mmstudy.trial_config": json.dumps(config),
                                               "mmstudy.seeds": "[0]"}).info.run_id


TRIAL = {"epochs": 1, "device": "cpu", "dataset": {"name": "synthetic", "size": "tiny", "n_train": 32, "n_val": 16,
                                                   "n_test": 16}}


def test_from_run_refuses_a_plugin_named_by_the_run_before_importing_it(workdir, store, capsys, canary):
    path, marker = canary
    uri = store
    run_id = trial_run(uri, dict(TRIAL, balancer={"name": path}))
    capsys.readouterr()  # MLflow's own set-up lines
    assert main(["debug", "--from-run", run_id, "--tracking-uri", uri, "--out", str(workdir / "out")]) == 2
    line = one_error_line(capsys)
    assert f"MLflow run {run_id}" in line and f"'{path}'" in line and "--allow-plugin" in line, line
    assert not marker.exists() and not (workdir / "out").exists()


@pytest.mark.parametrize("how", ["--allow-plugin", "--balancer", "balancer.name="])
def test_from_run_imports_a_plugin_the_user_allowed_or_named(workdir, store, capsys, canary, how):
    path, marker = canary
    uri = store
    run_id = trial_run(uri, dict(TRIAL, balancer={"name": path}))
    extra = {"--allow-plugin": ["--allow-plugin"], "--balancer": ["--balancer", path],
             "balancer.name=": [f"balancer.name={path}"]}[how]
    capsys.readouterr()
    assert main(["debug", "--from-run", run_id, "--tracking-uri", uri, *extra]) == 2
    # imported (the canary ran), then refused for what it is: no Balancer
    assert marker.exists() and "is not a subclass of trainables.balancers.base.Balancer" in one_error_line(capsys)


@pytest.mark.parametrize("tag, value, fragment", [
    ("mmstudy.trial_config", "{not json", "malformed mmstudy.trial_config tag (not JSON)"),
    ("mmstudy.trial_config", "[1, 2]", "malformed mmstudy.trial_config tag (not a mapping)"),
    ("mmstudy.trial_config", '{"epochs": 0}', "epochs: Input should be greater than or equal to 1"),
    ("mmstudy.trial_config", '{"balancer": "x"}', "balancer: Input should be a valid dictionary"),
    ("mmstudy.trial_config", '{"device": "tpu"}', "device: Input should be 'auto', 'cpu' or 'cuda'"),
    ("mmstudy.seeds", "[]", "malformed mmstudy.seeds tag"),
    ("mmstudy.seeds", "[0, 0]", "malformed mmstudy.seeds tag"),
    ("mmstudy.seeds", '["a"]', "malformed mmstudy.seeds tag"),
    ("mmstudy.seeds", "[true]", "malformed mmstudy.seeds tag"),
    ("mmstudy.seeds", "7", "malformed mmstudy.seeds tag"),
    ("mmstudy.provenance", "{oops", "malformed mmstudy.provenance tag (not JSON)"),
    ("mmstudy.provenance", '{"threads": "many"}', "malformed mmstudy.provenance tag (provenance.threads"),
    ("mmstudy.provenance", '{"threads": 0}', "malformed mmstudy.provenance tag (provenance.threads"),
    ("mmstudy.provenance", '{"versions": [1]}', "malformed mmstudy.provenance tag (provenance.versions"),
    ("mmstudy.provenance", '{"git": "main"}', "malformed mmstudy.provenance tag (provenance.git"),
])
def test_from_run_with_a_malformed_tag_is_one_line(workdir, store, capsys, tag, value, fragment):
    uri = store
    run_id = trial_run(uri, TRIAL)
    MlflowClient(uri).set_tag(run_id, tag, value)
    capsys.readouterr()
    assert main(["debug", "--from-run", run_id, "--tracking-uri", uri, "--out", str(workdir / "out")]) == 2
    assert fragment in one_error_line(capsys)
    assert not (workdir / "out").exists()


def test_from_run_on_a_server_that_does_not_answer_says_so(workdir, store, capsys, monkeypatch):
    """Not "no MLflow run": the store is named as unreachable, and no SQLite file appears for a wrong path."""
    import socket

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert main(["debug", "--from-run", "0" * 32, "--tracking-uri", f"http://127.0.0.1:{port}"]) == 2
    assert f"tracking_uri: cannot reach MLflow at 'http://127.0.0.1:{port}'" in one_error_line(capsys)
    assert main(["debug", "--from-run", "0" * 32, "--tracking-uri", f"sqlite:///{workdir}/gone.db"]) == 2
    assert "no MLflow store at" in one_error_line(capsys) and not (workdir / "gone.db").exists()
    capsys.readouterr()
    assert main(["debug", "--from-run", "0" * 32, "--tracking-uri", store]) == 2
    assert f"--from-run: no MLflow run '{'0' * 32}' in {store}" in one_error_line(capsys)


def tampered_study(workdir, store: str, where: str, path: str):
    """A real study folder (records made, never run) whose study.json someone with write access to the shared
    storage edited to name a plug-in."""
    from study import records
    from study.config import load_study_config

    raw = {"name": "shared", "trial": TRIAL, "storage_path": str(workdir / "runs"), "tracking_uri": store,
           "experiment_name": f"tampered-{uuid.uuid4().hex[:8]}", "mode": "compare", "variants": {"only": {}}}
    study = records.start(load_study_config(None, raw=raw))
    info = json.loads((study.dir / "study.json").read_text())
    if where == "trial":
        info["config"]["trial"]["balancer"] = {"name": path}
    elif where == "variant":
        info["config"]["variants"]["only"] = {"balancer": {"name": path}}
    else:  # a search space's categorical choice of the balancer
        choice = {"type": "categorical", "choices": ["none", path]}
        info["config"].update(mode="search", variants={}, search_space={"params": {"balancer.name": choice}})
    (study.dir / "study.json").write_text(json.dumps(info))
    return study.dir


@pytest.mark.parametrize("where", ["trial", "variant", "space"])
def test_resume_refuses_a_plugin_named_by_study_json(workdir, store, capsys, canary, where):
    """(`sync` reads the snapshot the same way, through Study.config, once the folder has a Tune experiment.)"""
    path, marker = canary
    folder = tampered_study(workdir, store, where, path)
    capsys.readouterr()
    assert main(["resume", str(folder)]) == 2
    line = one_error_line(capsys)
    assert f"{folder}/study.json names the plug-in '{path}'" in line and "--allow-plugin" in line, line
    assert not marker.exists()


def test_list_shows_such_a_study_with_a_note_and_imports_nothing(workdir, store, capsys, canary):
    path, marker = canary
    folder = tampered_study(workdir, store, "trial", path)
    capsys.readouterr()
    assert main(["list", "--storage-path", str(workdir / "runs")]) == 0
    out = capsys.readouterr().out
    assert "shared" in out and str(folder) in out and f"names the plug-in '{path}' (--allow-plugin)" in out, out
    assert not marker.exists()


def test_a_study_of_the_users_own_plugin_is_not_refused_while_it_starts(workdir, store):
    """`mmstudy run` with the user's own config naming a plug-in: the records it starts are its own."""
    from study import records
    from study.config import load_study_config

    raw = {"name": "own", "trial": dict(TRIAL, balancer={"name": "fault_balancers:CrashAtEpoch", "marker": "m"}),
           "storage_path": str(workdir / "runs"), "tracking_uri": store, "experiment_name": "own",
           "mode": "compare", "variants": {"only": {}}}
    study = records.start(load_study_config(None, raw=raw))
    assert study.config.trial_config().balancer.name == "fault_balancers:CrashAtEpoch"
    reopened = records.open_study(study.dir)  # the same folder read back later is a record: refused unasked
    with pytest.raises(Exception, match="names the plug-in 'fault_balancers:CrashAtEpoch'"):
        reopened.config
