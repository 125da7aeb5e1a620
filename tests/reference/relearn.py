"""Diagnosing & Re-learning reference loop, written from the authors' code
(github.com/GeWu-Lab/Diagnosing_Relearning_ECCV2024, commit 025085ea82ed784c6ab6e5fb1b08bfe498dd0fc7,
code/ours.py): `get_feature`, `reinit_score` (MinMaxScaler(-1, 1), KMeans, `purity_score`, tanh of the
gap), `reinit` (every encoder parameter pulled toward the saved initial weights) and the schedule in `main`.
Two deliberate differences from that file, both the project's documented judgement calls: the re-initialisation
after epoch e runs at the start of epoch e + 1 on that epoch's shuffle of the training batches, and KMeans
is a plain k-means++ + Lloyd written here (numpy/torch), seeded draw for draw like the project's, instead of
sklearn's. Does not import the project's balancer."""
from __future__ import annotations

import numpy as np
import torch

from reference import plain_epoch


def minmax(x):
    lo, hi = x.min(axis=0), x.max(axis=0)
    rng = np.where(hi > lo, hi - lo, 1.0)
    return (x - lo) / rng * 2 - 1


def kmeans_fit_predict(x, k, seed):
    g = torch.Generator().manual_seed(seed)
    xt = torch.from_numpy(x)
    n = len(x)
    centres = [xt[int(torch.randint(n, (1,), generator=g))]]
    while len(centres) < k:
        d2 = torch.stack([((xt - c) ** 2).sum(1) for c in centres]).min(0).values
        if float(d2.sum()) <= 0:
            centres.append(xt[int(torch.randint(n, (1,), generator=g))])
        else:
            centres.append(xt[int(torch.multinomial(d2 / d2.sum(), 1, generator=g))])
    c = torch.stack(centres)
    labels = ((xt[:, None, :] - c[None]) ** 2).sum(-1).argmin(1)
    for _ in range(300):
        for j in range(k):
            if (labels == j).any():
                c[j] = xt[labels == j].mean(0)
        new = ((xt[:, None, :] - c[None]) ** 2).sum(-1).argmin(1)
        if torch.equal(new, labels):
            break
        labels = new
    return labels.numpy()


def purity_score(y_true, y_pred):
    y_voted = np.zeros(y_true.shape)
    labels = np.unique(y_true)
    for i, lab in enumerate(labels):
        y_true = np.where(y_true == lab, i, y_true)
    bins = np.concatenate((np.unique(y_true), [np.max(y_true) + 1]))
    for cluster in np.unique(y_pred):
        hist, _ = np.histogram(y_true[y_pred == cluster], bins=bins)
        y_voted[y_pred == cluster] = np.argmax(hist)
    return float((y_true == y_voted).mean())


def get_feature(ref, batches):
    ref.model.eval()
    out = {m: [] for m in ref.modalities}
    labels = []
    with torch.no_grad():
        for inputs, y in batches:
            for m in ref.modalities:
                out[m].append(ref.model.encoder(m)(inputs[m]))
            labels.append(y)
    ref.model.train()
    return {m: torch.cat(v).numpy() for m, v in out.items()}, torch.cat(labels).numpy()


def train(ref, holdout_batches, move_lambda=3.0, reinit_every=20, reinit_times=3, kmeans_seed=0):
    checkpoint = {name: p.detach().clone() for name, p in ref.model.named_parameters()}
    flag_reinit = 0
    for epoch in range(ref.num_epochs):
        last = epoch - 1
        if last > 0 and last % reinit_every == 0:
            flag_reinit += 1
            if flag_reinit <= reinit_times:
                train_f, train_y = get_feature(ref, ref.batches[epoch])
                val_f, val_y = get_feature(ref, holdout_batches)
                for m in ref.modalities:
                    gap = abs(purity_score(train_y.copy(), kmeans_fit_predict(minmax(train_f[m]), ref.num_classes, kmeans_seed))
                              - purity_score(val_y.copy(), kmeans_fit_predict(minmax(val_f[m]), ref.num_classes, kmeans_seed)))
                    weight = torch.tanh(torch.tensor(move_lambda * gap))
                    for name, param in ref.model.named_parameters():
                        if name.startswith(f"encoders.{m}."):
                            param.data = weight * checkpoint[name] + (1 - weight) * param.data
        plain_epoch(ref, epoch)
        yield
