"""ARL reference loop, written from the authors' code (github.com/shicaiwei123/ICCV2025-ARL, commit
358af4f6782781ac3821527beae3321e77f9d31e): `train_epoch` in main_arl_variance.py (modality analysis, the
asymmetric softmax weights, gamma-weighted unimodal losses, clip to norm 40), `GradScale` in
models/backbone.py (applied here, as there, to the encoder's feature map before pooling) and the *_AUXI
fusions (unimodal logits = the fused head with the other modality's features zeroed).
`apply_weights=True` writes the computed weights back into `args` (what the README describes); the released
file leaves them at the warm-up's 0.5 (`apply_weights=False`). Keeps `ref.entropy_shares` per step. Does not
import the project's balancer."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class GradScale(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, weight):
        ctx.save_for_backward(weight)
        return input

    @staticmethod
    def backward(ctx, grad_output):
        (weight,) = ctx.saved_tensors
        return grad_output + grad_output * weight, None


def train(ref, gamma=4.0, temperature=8.0, start=5, clip_norm=40.0, apply_weights=True):
    a, v = ref.modalities
    args = SimpleNamespace(audio_weight=0.5, visual_weight=0.5, current_epoch=0)
    ref.entropy_shares = []  # per step: (epoch, H_a share, H_v share) before the 0.3 clamp

    def encode(m, x, weight_name):
        enc = ref.model.encoder(m)
        out = enc.feature_map(x)
        if args.current_epoch > start:
            out = GradScale.apply(out, torch.tensor(getattr(args, weight_name)))
        return enc.pool(out)

    for epoch in range(ref.num_epochs):
        ref.model.train()
        args.current_epoch = epoch
        for inputs, label in ref.batches[epoch]:
            za, zv = encode(a, inputs[a], "audio_weight"), encode(v, inputs[v], "visual_weight")
            feats = {a: za, v: zv}
            out = ref.model.fuse(feats)
            out_a = ref.model.fuse({a: za, v: torch.zeros_like(zv)})
            out_v = ref.model.fuse({a: torch.zeros_like(za), v: zv})
            uni = ref.model.unimodal_logits(feats, detach_probe=ref.loss_setting == "multimodal")
            loss_f = ref.task_loss(out, uni, label)  # CE(fused), plus the trainer's separate heads' CEs
            loss_a, loss_v = F.cross_entropy(out_a, label), F.cross_entropy(out_v, label)

            calculate_a = torch.mean(torch.abs(out_a), 0).sum().detach().numpy()
            calculate_b = torch.mean(torch.abs(out_v), 0).sum().detach().numpy()
            pa, pv = torch.softmax(out_a, 1), torch.softmax(out_v, 1)
            H_a = torch.sum(-pa * torch.log(pa + 1e-16), 1).mean().detach().numpy().item()
            H_v = torch.sum(-pv * torch.log(pv + 1e-16), 1).mean().detach().numpy().item()
            H_a_n, H_v_n = H_a / (H_a + H_v), H_v / (H_a + H_v)
            ref.entropy_shares.append((epoch, H_a_n, H_v_n))
            H_a = torch.clamp(torch.tensor(H_a_n), 0.3).numpy()
            H_v = torch.clamp(torch.tensor(H_v_n), 0.3).numpy()
            a_weight, v_weight = 1 / H_a, 1 / H_v
            calculate_a, calculate_b = calculate_a / (calculate_a + calculate_b), calculate_b / (calculate_a + calculate_b)
            a_weight, v_weight = a_weight / (a_weight + v_weight), v_weight / (a_weight + v_weight)
            if epoch > start:
                weight = F.softmax(torch.tensor(np.array([calculate_b * a_weight * temperature,
                                                          calculate_a * v_weight * temperature])), 0)
                if apply_weights:
                    args.audio_weight, args.visual_weight = float(weight[0]), float(weight[1])
                loss = loss_f + (loss_a + loss_v) * gamma
            else:
                loss = loss_f + (loss_a + loss_v) * 1
                args.audio_weight = args.visual_weight = 0.5
            ref.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if clip_norm > 0:
                nn.utils.clip_grad_norm_(ref.model.parameters(), max_norm=clip_norm, norm_type=2)
            ref.optimizer.step()
        ref.scheduler.step()
        yield
