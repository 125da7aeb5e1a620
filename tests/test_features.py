"""The MM/B-MM feature pictures (analysis.features): separability numbers by hand, and the figure from a tiny
real study's best-epoch weights (real Ray Tune, Optuna, MLflow)."""
import json
import sys

import matplotlib.image as mpimg
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from analysis.features import NO_UMAP, feature_pictures, separability, trial_features
from analysis.load import load_study
from analysis.summary import study_summary
from trainables.errors import ConfigError

TINY = {"epochs": 2, "dataset": {"name": "synthetic", "size": "tiny", "n_train": 96, "n_val": 48, "n_test": 96},
        "model": {"feature_dim": 8}, "optim": {"batch_size": 32}, "balancer": {"name": "bmm"}}


def blobs(rng, classes=4, per_class=40, spread=0.3):
    centres = rng.normal(0, 10, size=(classes, 5))
    labels = np.repeat(np.arange(classes), per_class)
    return centres[labels] + rng.normal(0, spread, size=(len(labels), 5)), labels


def test_separability_tells_separated_classes_from_shuffled_labels():
    rng = np.random.default_rng(0)
    points, labels = blobs(rng)
    apart = separability(points, labels)
    assert apart.silhouette > 0.8 and apart.knn_accuracy == 1.0
    shuffled = separability(points, rng.permutation(labels))
    assert abs(shuffled.silhouette) < 0.1 and shuffled.knn_accuracy < 0.5  # chance is 0.25
    lone = separability(points, np.zeros(len(labels), dtype=int))  # one class: nothing to separate
    assert np.isnan(lone.silhouette) and np.isnan(lone.knn_accuracy)


@pytest.fixture(scope="module")
def bmm_study(tmp_path_factory, ray_local):
    """A B-MM search (2 trials) with its joint-training baseline (3 seeds) and one confirmation (2 fresh seeds),
    every trial's best epoch on its MLflow run (log_checkpoint: best)."""
    from study.config import load_study_config
    from study.runner import run_study

    tmp = tmp_path_factory.mktemp("features")
    raw = {"name": "feat", "trial": TINY, "storage_path": str(tmp / "runs"),
           "tracking_uri": f"sqlite:///{tmp}/mlflow.db",
           "search_space": {"balancer": "bmm", "params": {"alpha": {"low": 0.1, "high": 4.0, "log": True}}},
           "num_samples": 2, "scheduler": "none", "seeds": [0], "baseline": {"seeds": [5, 6, 7]},
           "confirm": {"top_k": 1, "seeds": [5, 6]}, "log_checkpoint": "best"}
    cfg = load_study_config(None, raw=raw)
    run_study(cfg)
    trials = load_study(str(cfg.study_dir()))
    return cfg, trials, study_summary(trials, ["val_acc"], ["max"])


@pytest.mark.integration
def test_runs_keep_their_status_and_numeric_sampled_params(bmm_study):
    """Adding the best weights must not reopen a closed run; MLflow's compare view reads the sampled
    parameter as a number on every trial's run."""
    cfg, trials, _ = bmm_study
    client = MlflowClient(cfg.resolved_tracking_uri())
    for run_id, role in zip(trials["run_id"], trials["role"]):
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED", (role, run.info.status)
        assert [a.path for a in client.list_artifacts(run_id, "best_checkpoint")], role
        if role != "baseline":
            point = json.loads(run.data.tags["mmstudy.point"])
            assert float(run.data.params["balancer.alpha"]) == pytest.approx(point["balancer.alpha"])


@pytest.mark.integration
def test_report_draws_the_features_of_joint_training_and_the_confirmed_best(bmm_study, tmp_path):
    pytest.importorskip("umap", reason="umap-learn is the optional extra: pip install -e '.[umap]'")
    from analysis.report import build_report

    cfg, _, summary = bmm_study
    result = build_report(str(cfg.study_dir()), str(tmp_path), log_to_mlflow=False, command="mmstudy report feat")
    assert "features.png" in result["files"]
    image = mpimg.imread(tmp_path / "features.png")
    assert image.shape[0] > 600 and image.shape[1] > 1000 and float(np.std(image[..., :3])) > 0.02
    text = (tmp_path / "report.md").read_text()
    assert "## Learned features" in text and "![features](features.png)" in text and NO_UMAP not in text
    rows = [line for line in text.splitlines() if line.startswith(("| joint training", "| best confirmed"))]
    assert len(rows) == 6, text  # audio, visual, fused for each model
    assert all(line.count("%") == 2 for line in rows), rows  # k-NN accuracy on the features and on the UMAP
    assert summary.confirmed and any("| 3 |" in line for line in rows) and any("| 2 |" in line for line in rows)


@pytest.mark.integration
def test_without_umap_the_section_has_the_numbers_and_one_line_for_the_figure(bmm_study, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "umap", None)  # `import umap` raises ImportError, as without the extra
    _, trials, summary = bmm_study
    files, text = feature_pictures(trials, summary, tmp_path)
    assert files == [] and not (tmp_path / "features.png").exists()
    assert NO_UMAP in text and 'pip install -e ".[umap]"' in text
    rows = [line for line in text.splitlines() if line.startswith(("| joint training", "| best confirmed"))]
    assert len(rows) == 6 and all(line.endswith("– | – |") for line in rows), rows


@pytest.mark.integration
def test_a_run_naming_an_unregistered_balancer_is_refused_not_imported(bmm_study):
    cfg, trials, _ = bmm_study
    client = MlflowClient(cfg.resolved_tracking_uri())
    good = client.get_run(trials["run_id"].iloc[0])
    config = {**json.loads(good.data.tags["mmstudy.trial_config"]), "balancer": {"name": "features_probe:Evil"}}
    run = client.create_run(good.info.experiment_id, tags={"mmstudy.trial_config": json.dumps(config),
                                                            "mmstudy.seeds": "[0]"})
    with pytest.raises(ConfigError, match="names the plug-in 'features_probe:Evil'"):
        trial_features(client, run.info.run_id, "evil", "x", {})
    assert "features_probe" not in sys.modules
