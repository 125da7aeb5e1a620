"""PMR reference loop, written from the authors' main_Prototype_grad.py
(github.com/fanyunfeng-bit/Modal-Imbalance-PMR, commit 3615e48983555089b0e693380087617c3797a641):
`calculate_prototype` before training and after every epoch, `EU_dist`, the per-batch ratio and the
alpha-weighted prototype CE of `train_epoch`. Does not import the project's balancer."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def eu_dist(x1, x2):
    """The authors' double loop: sqrt(<x1_i - x2_j, x1_i - x2_j>)."""
    d = torch.zeros(x1.shape[0], x2.shape[0])
    for i in range(x1.shape[0]):
        for j in range(x2.shape[0]):
            d[i, j] = torch.sqrt(torch.dot(x1[i] - x2[j], x1[i] - x2[j]))
    return d


def calculate_prototype(ref, batches, epoch, fraction, momentum, old=None):
    a, v = ref.modalities
    protos = {m: None for m in (a, v)}
    count = [0] * ref.num_classes
    ref.model.eval()
    with torch.no_grad():
        all_num, used = len(batches), 0
        for inputs, labels in batches:
            feats = {m: ref.model.encoder(m)(inputs[m]) for m in (a, v)}
            for m in (a, v):
                if protos[m] is None:
                    protos[m] = torch.zeros(ref.num_classes, feats[m].shape[1])
            for i, label in enumerate(labels):
                count[label] += 1
                for m in (a, v):
                    protos[m][label] += feats[m][i]
            used += 1
            if used >= max(int(all_num * fraction + 1e-9), 1):  # the code: all_num // 10
                break
    for c in range(ref.num_classes):
        for m in (a, v):
            if count[c]:
                protos[m][c] /= count[c]
            elif old is not None:  # judgement call (the code divides by zero): keep the old prototype
                protos[m][c] = old[m][c]
    if epoch > 0:
        protos = {m: (1 - momentum) * protos[m] + momentum * old[m] for m in (a, v)}
    ref.model.train()
    return protos


def train(ref, alpha=1.0, momentum=0.2, modulation_starts=0, modulation_ends=100, proto_fraction=0.1):
    a, v = ref.modalities
    protos = calculate_prototype(ref, ref.batches[0], 0, proto_fraction, momentum)
    for epoch in range(ref.num_epochs):
        ref.model.train()
        for inputs, labels in ref.batches[epoch]:
            feats, fused, uni = ref.forward(inputs)
            loss = ref.task_loss(fused, uni, labels)
            audio_sim, visual_sim = -eu_dist(feats[a], protos[a]), -eu_dist(feats[v], protos[v])
            if modulation_starts <= epoch <= modulation_ends:
                score_a = sum(F.softmax(audio_sim, 1)[i][labels[i]] for i in range(len(labels)))
                score_v = sum(F.softmax(visual_sim, 1)[i][labels[i]] for i in range(len(labels)))
                ratio_a = score_a / score_v
                if ratio_a > 1:
                    beta, lam = 0, alpha
                elif ratio_a < 1:
                    beta, lam = alpha, 0
                else:
                    beta, lam = 0, 0
                loss = loss + beta * F.cross_entropy(audio_sim, labels) + lam * F.cross_entropy(visual_sim, labels)
            ref.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            ref.optimizer.step()
        ref.scheduler.step()
        protos = calculate_prototype(ref, ref.batches[epoch], epoch, proto_fraction, momentum, protos)
        yield
