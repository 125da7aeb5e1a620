"""User errors of the study commands (`report`, `ui`, `sync`): one line naming the field, exit status 2, no
traceback (main() would raise it), and nothing created -- no report folder, no empty SQLite store."""
import json
import os
import socket

import pytest

from study.cli import main


def closed_port_uri() -> str:
    """An http URI on a local port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def fake_study(folder, tracking_uri: str):
    """A study folder as `report`, `ui` and `sync` first read it: study.json, and no tune/ (never started)."""
    folder.mkdir()
    (folder / "study.json").write_text(json.dumps({"name": "s", "tracking_uri": tracking_uri, "experiment_id": "1",
                                                   "parent_run_id": "0" * 32, "config": {}}))
    return folder


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """The test's working directory (where a default store would appear); a down server fails at once."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    return tmp_path


def files_under(folder) -> set:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def one_error_line(capsys, fragment: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mmstudy: error: ") and fragment in err[0], err
    return err[0]


@pytest.mark.parametrize("command", ["report", "ui"])
def test_study_on_a_server_that_does_not_answer(workdir, capsys, command):
    uri = closed_port_uri()
    study = fake_study(workdir / "s", uri)
    before = files_under(workdir)
    assert main([command, str(study)]) == 2
    one_error_line(capsys, f"tracking_uri: cannot reach MLflow at '{uri}'")
    assert files_under(workdir) == before


@pytest.mark.parametrize("command", [["report", "quickstart"], ["report", "runs/quickstart"], ["ui", "quickstart"]])
def test_experiment_name_on_a_server_that_does_not_answer(workdir, capsys, monkeypatch, command):
    uri = closed_port_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert main(command) == 2
    one_error_line(capsys, f"tracking_uri: cannot reach MLflow at '{uri}'")
    assert files_under(workdir) == set()


def test_report_tracking_uri_flag_that_does_not_answer(workdir, capsys):
    uri = closed_port_uri()
    study = fake_study(workdir / "s", f"sqlite:///{workdir}/mlflow.db")
    assert main(["report", str(study), "--tracking-uri", uri]) == 2
    one_error_line(capsys, f"tracking_uri: cannot reach MLflow at '{uri}'")


@pytest.mark.parametrize("command", ["report", "ui"])
def test_study_whose_sqlite_store_is_gone_creates_no_empty_store(workdir, capsys, command):
    study = fake_study(workdir / "s", f"sqlite:///{workdir}/gone.db")
    assert main([command, str(study)]) == 2
    one_error_line(capsys, f"tracking_uri: no MLflow store at 'sqlite:///{workdir}/gone.db'")
    assert not (workdir / "gone.db").exists() and files_under(workdir) == {"s", "s/study.json"}


def test_sync_of_a_folder_that_is_not_a_study(workdir, capsys):
    (workdir / "plain").mkdir()
    assert main(["sync", str(workdir / "plain")]) == 2
    one_error_line(capsys, f"study: '{workdir / 'plain'}' is not a study folder (no study.json)")
    assert files_under(workdir) == {"plain"}


@pytest.mark.parametrize("empty_tune_dir", [False, True])
def test_sync_of_a_study_whose_tune_run_never_started(workdir, capsys, empty_tune_dir):
    study = fake_study(workdir / "s", f"sqlite:///{workdir}/mlflow.db")
    if empty_tune_dir:
        (study / "tune").mkdir()
    before = files_under(workdir)
    assert main(["sync", str(study)]) == 2
    one_error_line(capsys, "has no Tune experiment (tune/) to sync")
    assert files_under(workdir) == before  # in particular no mlflow.db


@pytest.mark.parametrize("out, fragment", [
    ("afile", "--out: '{w}/afile' is a file, not a folder"),
    ("afile/report", "--out: '{w}/afile' is a file, not a folder"),
    pytest.param("/sys/mmstudy-report", "--out: '/sys/mmstudy-report' is not writable",  # not even for root
                 marks=pytest.mark.skipif(not os.path.isdir("/sys"), reason="no /sys (not Linux)")),
])
def test_report_out_that_cannot_be_written(workdir, capsys, out, fragment):
    study = fake_study(workdir / "s", closed_port_uri())  # the folder is checked first: before MLflow is asked
    (workdir / "afile").write_text("")
    out = out if out.startswith("/") else str(workdir / out)
    before = files_under(workdir)
    assert main(["report", str(study), "--out", out]) == 2
    one_error_line(capsys, fragment.format(w=workdir))
    assert files_under(workdir) == before


def test_report_default_out_in_a_study_folder_that_is_a_file(workdir, capsys):
    study = fake_study(workdir / "s", closed_port_uri())
    (study / "report").write_text("")
    assert main(["report", str(study)]) == 2
    one_error_line(capsys, f"--out: '{study}/report' is a file, not a folder")
