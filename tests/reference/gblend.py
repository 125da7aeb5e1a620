"""G-Blending reference loop (online G-Blend), written from the paper's method (Wang, Tran & Feiszli, CVPR 2020,
Sec. 3) as the unofficial timeseriesAI/tsai callback (tsai/callback/gblend.py, commit 41e3107) implements it:
at the start of every super-epoch, for each head (every unimodal model and the multimodal one) a copy of the
current weights is trained alone on T' for one super-epoch with a new optimizer; train loss L_T and held-out
loss L_V are measured on the copy before and after; dG = max(0, L_V1 - L_V2), dO = (L_V2 - L_T2) - (L_V1 - L_T1),
w = max(1e-8, dG / max(dO^2, 1e-8)) normalised; then the multi-head model trains for the super-epoch with
sum_k w_k CE_k. Differences from tsai, by design of this project: losses are evaluated on T' in eval mode
at both ends (tsai takes the last recorded training loss), and the copy's optimizer is plain (tsai: one-cycle).
`holdout` is the list of held-out batches (model-ready) that the test builds from its own split.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F


def _logits(model, x, head):
    if head == "fused":
        return model.fuse({m: model.encoder(m)(x[m]) for m in model.modality_names})
    return model.heads[head](model.encoder(head)(x[head]))


def _mean_ce(model, batches, head):
    model.eval()
    with torch.no_grad():
        total, n = 0.0, 0
        for x, y in batches:
            total += float(F.cross_entropy(_logits(model, x, head), y, reduction="sum"))
            n += len(y)
    return total / n


def train(ref, holdout, super_epoch=10):
    heads = [*ref.modalities, "fused"]
    weights = {k: float(k == "fused") for k in heads}
    blended = ref.loss_setting == "multimodal+unimodal"
    for epoch in range(ref.num_epochs):
        train_batches = ref.batches[epoch]
        if blended and epoch % super_epoch == 0:
            raw = {}
            for head in heads:
                temp = copy.deepcopy(ref.model)
                g = ref.optimizer.param_groups[0]
                opt = torch.optim.SGD(temp.parameters(), lr=g["lr"], momentum=g["momentum"],
                                      weight_decay=g["weight_decay"])
                lt1, lv1 = _mean_ce(temp, train_batches, head), _mean_ce(temp, holdout, head)
                for _ in range(super_epoch):
                    temp.train()
                    for x, y in train_batches:
                        loss = F.cross_entropy(_logits(temp, x, head), y)
                        opt.zero_grad()
                        loss.backward()
                        opt.step()
                lt2, lv2 = _mean_ce(temp, train_batches, head), _mean_ce(temp, holdout, head)
                d_g = max(0.0, lv1 - lv2)
                d_o = (lv2 - lt2) - (lv1 - lt1)
                raw[head] = max(1e-8, d_g / max(d_o ** 2, 1e-8))
            weights = {k: v / sum(raw.values()) for k, v in raw.items()}
        ref.model.train()
        for x, y in train_batches:
            _, fused, uni = ref.forward(x)
            if blended:
                loss = weights["fused"] * F.cross_entropy(fused, y) + sum(
                    weights[m] * F.cross_entropy(uni[m], y) for m in ref.modalities)
            else:
                loss = F.cross_entropy(fused, y) + sum(F.cross_entropy(uni[m], y) for m in ref.modalities)
            ref.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            ref.optimizer.step()
        ref.scheduler.step()
        ref.weights_seen = getattr(ref, "weights_seen", []) + [dict(weights)]
        yield
