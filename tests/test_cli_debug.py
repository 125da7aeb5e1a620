import json
import subprocess
import sys

import pytest

from study.cli import main


def test_debug_writes_metrics_json_with_the_documented_schema(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["debug", "--balancer", "none", "--dataset", "synthetic", "--epochs", "2", "--seed", "0", "--out",
               str(out), "--device", "cpu", "dataset.n_train=96", "dataset.n_val=32", "dataset.n_test=32",
               "model.fusion=film"])
    assert rc == 0
    payload = json.loads((out / "metrics.json").read_text())
    assert payload["config"]["model"]["fusion"] == "film" and payload["config"]["epochs"] == 2
    row = payload["history"][0]
    for key in ("epoch", "train_loss", "val_acc", "val_f1", "val_acc_audio", "val_acc_visual", "test_acc",
                "test_acc_audio", "test_acc_visual"):
        assert key in row
    for key in ("epoch", "val_acc", "test_acc", "test_f1", "test_acc_audio", "test_acc_visual"):
        assert key in payload["best"]
    table = capsys.readouterr().out
    assert "epoch" in table and "best epoch" in table


@pytest.mark.parametrize("args, fragment", [
    (["--balancer", "nope"], "balancer.name: unknown balancer 'nope'; allowed:"),
    (["--dataset", "cifar"], "dataset.name: unknown dataset 'cifar'; allowed: cmu_mosi, crema_d, kinetics_sounds, synthetic"),
    (["model.fusion=attention"], "model.fusion: Input should be 'concat', 'sum', 'film', 'gated' or 'late'"),
    (["optim.lrr=0.1"], "did you mean 'optim.lr'?"),
    (["epochs=two"], "epochs: Input should be a valid integer"),
    (["--balancer", "redreg", "balancer.tau_min=0.9"], "tau_min (0.9) must be < tau_max"),
    (["--threads", "0"], "--threads: must be at least 1 (got 0)"),
])
def test_bad_input_exits_2_with_one_line_and_leaves_nothing(tmp_path, args, fragment):
    out = tmp_path / "never"
    proc = subprocess.run([sys.executable, "-m", "study.cli", "debug", "--out", str(out), *args],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mmstudy: error: ") and fragment in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists()
