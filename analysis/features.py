"""The feature pictures of the MM/B-MM paper (its Fig. 4/5), measured: is a modality's representation
separable by class, for joint training and for the study's answer?

The paper shows UMAPs of the test set's audio, visual and fused features, joint training beside B-MM, and
reads "the visual modality became separable" off the pictures. `feature_pictures` draws the same panels for
the joint-training baseline and the study's best confirmed configuration (the summary's best trial: the
rank-1 confirmation when there is one) and puts a number on each: the silhouette score and the k-NN accuracy
of the class labels, computed on the features themselves (every seed the checkpoint holds) and on the 2-D
UMAP embedding that is drawn (one seed).

Each model is rebuilt from its MLflow run: the resolved trial config (`mmstudy.trial_config` tag) gives the
trainer (the synthetic benchmark regenerates from its seed), the run's `best_checkpoint/` (`log_checkpoint:
best`) its weights. A run is untrusted input: the weights are loaded with `torch.load(weights_only=True)`
(`Trainer.load`), the tags are checked as `debug --from-run` checks them (study.debug.trial_from_tags), and a
`package.module:Class` name in them is refused, never imported (trainables.balancers.plugin_trust).

umap-learn is an optional extra (`pip install -e ".[umap]"`); without it the section has the feature-space
numbers and one line saying how to get the figure.
"""
from __future__ import annotations

import json
import math
import statistics
import tempfile
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from trainables.errors import ConfigError

NO_UMAP = ('_The UMAP figure needs the optional extra umap-learn: `pip install -e ".[umap]"`, then '
           '`mmstudy report` again._')
NEIGHBOURS = 10  # k of the k-NN accuracy
FOLDS = 5  # its stratified cross-validation
# seeded, one thread: the same picture every time
UMAP_SETTINGS = {"n_neighbors": 15, "min_dist": 0.1, "random_state": 0, "n_jobs": 1}


@dataclass
class Separability:
    """How well class labels separate in a set of points: the silhouette score (-1..1, 0 = classes overlap;
    Euclidean) and the k-NN accuracy (k = NEIGHBOURS, stratified FOLDS-fold cross-validation; chance is
    the share of the largest class)."""
    silhouette: float
    knn_accuracy: float


def separability(points: np.ndarray, labels: np.ndarray) -> Separability:
    from sklearn.metrics import silhouette_score
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    points, labels = np.asarray(points, dtype=np.float64), np.asarray(labels)
    folds = min(FOLDS, int(np.unique(labels, return_counts=True)[1].min()) if labels.size else 0)
    if len(np.unique(labels)) < 2 or folds < 2:
        return Separability(math.nan, math.nan)
    knn = cross_val_score(KNeighborsClassifier(n_neighbors=min(NEIGHBOURS, len(labels) - len(labels) // folds)),
                          points, labels, cv=StratifiedKFold(folds, shuffle=True, random_state=0))
    return Separability(float(silhouette_score(points, labels)), float(knn.mean()))


# ----------------------------------------------------------------------------- models from their runs


@dataclass
class TrialFeatures:
    """One trial's test-split features and labels, per seed (a trial that drew its data per seed has a test
    set per seed): features[seed] = {feature set: n x d array}, labels[seed] = n labels."""
    title: str
    trial_id: str
    fused_as: str
    seeds: list[int]
    features: dict[int, dict[str, np.ndarray]] = field(default_factory=dict)
    labels: dict[int, np.ndarray] = field(default_factory=dict)


FUSED_AS = {"concat": "[z_a; z_v]", "sum": "[z_a; z_v]", "late": "[z_a; z_v]", "film": "FiLM hidden",
            "gated": "gated hidden"}


def fused_features(model, feats: dict[str, Any]):
    """The joint representation the fusion's output layer reads: [z_a; z_v] for concat, sum and late fusion
    (their logits are a linear map of it), the modulated hidden vector for film and gated fusion."""
    import torch

    out_layer = getattr(model.fusion, "fc_out", None)
    if out_layer is None:
        return torch.cat([feats[m] for m in model.modality_names], dim=1)
    captured = []
    handle = out_layer.register_forward_pre_hook(lambda module, args: captured.append(args[0]))
    try:
        model.fuse(feats)
    finally:
        handle.remove()
    return captured[0]


def trial_features(client, run_id: str, title: str, trial_id: str, data_cache: dict) -> TrialFeatures:
    """Rebuild the trial's trainer per seed, load its best-epoch weights, run the test split through the
    encoders (and the fusion) in eval mode without gradients."""
    import torch

    from analysis.load import quiet_downloads
    from study.debug import seed_config, trial_from_tags
    from trainables.balancers.plugin_trust import config_from_record
    from trainables.data.base import model_input
    from trainables.trainer import Trainer

    quiet_downloads()
    trial = trial_from_tags(run_id, client.get_run(run_id).data.tags, field="report")  # tags are data, checked
    trial.config = {**trial.config, "compile": False, "device": "auto"}  # on whatever this machine has
    config, seeds = trial.config, trial.seeds
    source = f"MLflow run {run_id} (tag mmstudy.trial_config)"
    with config_from_record(source):  # validated before anything else is read: no plug-in is imported from a run
        seed_config(trial, seeds[0])
    stored = {Path(a.path).name for a in client.list_artifacts(run_id, "best_checkpoint")}
    seeds = [s for s in seeds if f"seed_{s}.pt" in stored]
    if not seeds:
        raise ConfigError(f"run {run_id} has no best-epoch weights (best_checkpoint/); re-run the study with "
                          "`log_checkpoint: best`")
    found = TrialFeatures(title, trial_id, FUSED_AS.get((config.get("model") or {}).get("fusion", "concat"), "fused"),
                          seeds)
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:
            with config_from_record(source):
                cfg = seed_config(trial, seed)  # its own data draw where the trial drew one per seed
            key = json.dumps(cfg.to_dict()["dataset"], sort_keys=True)
            trainer = Trainer(cfg, data=data_cache.get(key))
            data_cache[key] = trainer.data
            trainer.load(client.download_artifacts(run_id, f"best_checkpoint/seed_{seed}.pt", tmp))  # weights_only
            model, specs = trainer.model.eval(), trainer.data.modalities
            trainer.extra.eval()  # a balancer's own modules (CAL's transform of the features)
            per_set: dict[str, list[np.ndarray]] = {m: [] for m in [*trainer.modalities, "fused"]}
            labels = []
            with torch.no_grad():
                for inputs, y in trainer.eval_loaders["test"]:
                    batch = {m: model_input(inputs[m], specs[m], trainer.device) for m in trainer.modalities}
                    with trainer.precision.autocast():
                        feats = trainer.balancer.transform_features(model.encode(batch), training=False)
                        fused = fused_features(model, feats)
                    for m in trainer.modalities:
                        per_set[m].append(feats[m].float().flatten(1).cpu().numpy())
                    per_set["fused"].append(fused.float().flatten(1).cpu().numpy())
                    labels.append(y.numpy())
            found.features[seed] = {name: np.concatenate(parts) for name, parts in per_set.items()}
            found.labels[seed] = np.concatenate(labels)
    return found


# ----------------------------------------------------------------------------- the figure and the section


def umap_embedding(points: np.ndarray) -> np.ndarray:
    import umap

    return umap.UMAP(**UMAP_SETTINGS).fit_transform(np.asarray(points, dtype=np.float32))


def features_figure(rows: list[TrialFeatures], embeddings: dict[tuple[str, str], np.ndarray],
                    scores: dict[tuple[str, str], Separability], num_classes: int, title: str):
    """One row per model (joint training first), one column per feature set, points coloured by class."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    sets = list(rows[0].features[rows[0].seeds[0]])
    fig, axes = plt.subplots(len(rows), len(sets), figsize=(4.3 * len(sets), 4.1 * len(rows) + 0.9), squeeze=False)
    cmap = plt.get_cmap("tab10" if num_classes <= 10 else "tab20")
    for r, row in enumerate(rows):
        colours = cmap(row.labels[row.seeds[0]] % cmap.N)
        for c, name in enumerate(sets):
            ax, xy, score = axes[r][c], embeddings[(row.trial_id, name)], scores[(row.trial_id, name)]
            ax.scatter(xy[:, 0], xy[:, 1], c=colours, s=max(4.0, min(14.0, 3000 / len(xy))), alpha=0.75,
                       linewidths=0, rasterized=True)
            label = name if name != "fused" else f"fused ({row.fused_as})"
            ax.set_title(f"{label}\nsilhouette {score.silhouette:.2f} · "
                         f"{NEIGHBOURS}-NN acc {100 * score.knn_accuracy:.0f} %", fontsize=10)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(f"{textwrap.fill(row.title, 34)}\nseed {row.seeds[0]}", fontsize=10)
    handles = [Line2D([], [], marker="o", linestyle="", color=cmap(k % cmap.N), label=f"class {k}")
               for k in range(num_classes)]
    fig.legend(handles=handles, loc="lower center", ncol=min(num_classes, 10), frameon=False, fontsize=9)
    fig.suptitle(title, fontsize=12)
    fig.tight_layout(rect=(0, 0.05, 1, 0.97))
    return fig


def _mean_sd(values: list[float], digits: int = 2) -> str:
    values = [v for v in values if math.isfinite(v)]
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.fmean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def section(rows: list[TrialFeatures], drawn: bool, scores_2d: dict, notes: list[str]) -> str:
    lines = ["## Learned features (MM/B-MM Fig. 4/5 style)", ""]
    classes = int(max(r.labels[s].max() for r in rows for s in r.seeds)) + 1
    if drawn:
        lines += ["![features](features.png)", ""]
    lines += [f"Test-split features of each model's best-epoch weights (`log_checkpoint: best`): each modality's "
              f"encoder output and the fused representation. Class separability: silhouette score (−1..1; 0 = "
              f"the classes overlap) and {NEIGHBOURS}-NN accuracy ({FOLDS}-fold stratified cross-validation; chance "
              f"≈ {100 / classes:.0f} % for {classes} classes). **Features**: on the features themselves, mean ± sd over the seeds "
              f"(n given). **UMAP 2-D**: on the drawn embedding of the first seed (UMAP distorts distances; the "
              f"features' numbers are the measurement, the embedding's describe the picture).", "",
              "| model | features of | n seeds | silhouette (features) | k-NN acc (features) | silhouette (UMAP 2-D) "
              "| k-NN acc (UMAP 2-D) |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        for name in row.features[row.seeds[0]]:
            values = [separability(row.features[s][name], row.labels[s]) for s in row.seeds]
            flat = scores_2d.get((row.trial_id, name))
            lines.append(f"| {row.title} | {name} | {len(row.seeds)} | {_mean_sd([v.silhouette for v in values])} | "
                         f"{_mean_sd([100 * v.knn_accuracy for v in values], 0)} % | "
                         + (f"{flat.silhouette:.2f} | {100 * flat.knn_accuracy:.0f} % |" if flat else "– | – |"))
    return "\n".join(lines + [""] + notes + [""])


def feature_pictures(trials: pd.DataFrame, summary, out: Path) -> tuple[list[str], str]:
    """The report's feature section: the files written (features.png when umap-learn is installed) and its
    markdown (a table of separability numbers, or one line saying why there is none)."""
    from mlflow.tracking import MlflowClient

    from analysis.tables import trial_label

    header = "## Learned features (MM/B-MM Fig. 4/5 style)\n\n"
    picks = [(summary.baseline_trial_id, "joint training (none)"), (summary.best_trial_id,
                                                                    "best confirmed" if summary.confirmed else "best")]
    picks = [(t, title) for t, title in picks if t]
    if len(picks) < 2 or picks[0][0] == picks[1][0]:
        return [], header + "_Not drawn: the study needs a finished joint-training baseline and a best trial._\n"
    client = MlflowClient(tracking_uri=trials.attrs["tracking_uri"])
    rows, cache = [], {}
    try:
        for trial_id, title in picks:
            row = trials[trials["trial_id"] == trial_id].iloc[0]
            label = title if trial_id == picks[0][0] else f"{title}: {trial_label(row)}"
            rows.append(trial_features(client, row["run_id"], label, trial_id, cache))
    except (ConfigError, OSError) as err:  # no weights, a refused run, a dataset not on this machine
        return [], header + f"_Not drawn: {str(err).splitlines()[0]}._\n"
    try:
        import umap  # noqa: F401
    except ImportError:
        return [], section(rows, False, {}, [NO_UMAP])
    import matplotlib.pyplot as plt

    embeddings, scores = {}, {}
    for row in rows:
        for name, points in row.features[row.seeds[0]].items():
            embeddings[(row.trial_id, name)] = flat = umap_embedding(points)
            scores[(row.trial_id, name)] = separability(flat, row.labels[row.seeds[0]])
    num_classes = int(max(r.labels[s].max() for r in rows for s in r.seeds)) + 1
    name = trials.attrs.get("study", "study")
    fig = features_figure(rows, embeddings, scores, num_classes,
                          f"{name}: UMAP of the test-split features, coloured by class "
                          "(numbers: class separability of each 2-D embedding)")
    fig.savefig(out / "features.png", dpi=130)
    plt.close(fig)
    return ["features.png"], section(rows, True, scores, [])
