"""MMPareto reference step, written from GeWu-Lab/MMPareto_ICML2024 (commit a339db3, code/MMPareto.py
`train_epoch` and code/min_norm_solvers.py) as a plain loop: three separate backward passes (multimodal
loss, then each unimodal loss) record each encoder's per-tensor gradients; cos > 0 gives weights 1/2, 1/2,
otherwise the two-vector min-norm solution; then the joint loss is backpropagated and every encoder tensor's
gradient is replaced by gamma * max(1, |g_joint| / |g_new|) * g_new with g_new = 2 (k0 g_mm + k1 g_uni).
Under `loss_setting: multimodal` the unimodal losses do not reach the encoders (their heads are detached
probes), so their encoder gradients are zero, as the authors' code would record after zero_grad.
Keeps `ref.alpha_mm`: per step, each encoder's weight k0 on the multimodal gradient.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _grads(params):
    return [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in params]


def _min_norm(v11, v12, v22):
    if v12 >= v11:
        return 0.999, 0.001
    if v12 >= v22:
        return 0.001, 0.999
    c = -1.0 * ((v12 - v22) / (v11 + v22 - 2 * v12))
    return c, 1 - c


def train(ref, gamma=1.5, agree_when="gt", rescale_scope="tensor"):
    encoders = {m: list(ref.model.encoder(m).parameters()) for m in ref.modalities}
    unimodal_trains_encoders = ref.loss_setting == "multimodal+unimodal"
    ref.alpha_mm = []
    for epoch in range(ref.num_epochs):
        ref.model.train()
        for inputs, labels in ref.batches[epoch]:
            _, fused, uni = ref.forward(inputs)
            loss_mm = F.cross_entropy(fused, labels)
            loss_uni = {m: F.cross_entropy(uni[m], labels) for m in ref.modalities}
            ref.optimizer.zero_grad(set_to_none=True)
            loss_mm.backward(retain_graph=True)
            g_mm = {m: _grads(encoders[m]) for m in ref.modalities}
            g_uni = {}
            for m in ref.modalities:
                ref.optimizer.zero_grad(set_to_none=True)
                if unimodal_trains_encoders:
                    loss_uni[m].backward(retain_graph=True)
                g_uni[m] = _grads(encoders[m])
            ref.optimizer.zero_grad(set_to_none=True)
            k = {}
            for m in ref.modalities:
                a = torch.cat([g.flatten() for g in g_mm[m]])
                b = torch.cat([g.flatten() for g in g_uni[m]])
                cos = F.cosine_similarity(a, b, dim=0)
                if (cos >= 0) if agree_when == "ge" else (cos > 0):
                    k[m] = (0.5, 0.5)
                else:
                    k[m] = _min_norm(float((a * a).sum()), float((a * b).sum()), float((b * b).sum()))
            ref.alpha_mm.append({m: k[m][0] for m in ref.modalities})
            ref.task_loss(fused, uni, labels).backward()
            for m in ref.modalities:
                new = [2 * k[m][0] * gm + 2 * k[m][1] * gu for gm, gu in zip(g_mm[m], g_uni[m])]
                if rescale_scope == "tensor":
                    for p, n in zip(encoders[m], new):
                        diff = torch.norm(p.grad) / torch.norm(n)
                        p.grad = diff * n * gamma if diff > 1 else n * gamma
                else:
                    joint = torch.cat([p.grad.flatten() for p in encoders[m]]).norm()
                    diff = joint / torch.cat([n.flatten() for n in new]).norm()
                    for p, n in zip(encoders[m], new):
                        p.grad = diff * n * gamma if diff > 1 else n * gamma
            ref.optimizer.step()
        ref.scheduler.step()
        yield
