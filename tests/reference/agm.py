"""AGM reference loop, written from the authors' code (github.com/lihong2303/AGM_ICCV2023, commit
5a65542c70b1c7c15c5df291e77fa9cf2bbb9549): `GradMod` (identity modules with full backward hooks that scale
the mono-modal responses' gradients, masked passes in eval mode) and `train` in run/CREMAD_main.py (scores,
running means over `iteration`, coefficients, the clipping rule). Epochs are 1-based here as in the code.
Keeps `ref.fusion_grad_range`: per step, the range of the gradients the clipping rule tests. Does not import
the project's balancer."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class ModalityOut(nn.Module):
    def forward(self, x):
        return x


def train(ref, alpha=1.0, modulation_starts=0, modulation_ends=19):
    a, v = ref.modalities
    scale = {"a": 1.0, "v": 1.0}
    m_a_o, m_v_o = ModalityOut(), ModalityOut()
    m_a_o.register_full_backward_hook(lambda m, gin, gout: (gin[0].clone() * scale["a"],))
    m_v_o.register_full_backward_hook(lambda m, gin, gout: (gin[0].clone() * scale["v"],))

    def net(inputs, pad_audio=False, pad_visual=False):
        x = dict(inputs)
        if pad_audio:
            x[a] = torch.zeros_like(x[a])
        if pad_visual:
            x[v] = torch.zeros_like(x[v])
        return ref.model.fuse({m: ref.model.encoder(m)(x[m]) for m in (a, v)})

    ref.fusion_grad_range = []  # per step: (max, min) over the fusion weights' gradients, before the clip
    train_score_a = train_score_v = 0.0
    total_batch = ref.steps_per_epoch
    for epoch in range(1, ref.num_epochs + 1):
        ref.model.train()
        for step, (inputs, label) in enumerate(ref.batches[epoch - 1]):
            iteration = (epoch - 1) * total_batch + step + 1
            feats, total_out, uni = ref.forward(inputs)
            ref.model.eval()
            pad_visual_out = net(inputs, pad_visual=True)
            pad_audio_out = net(inputs, pad_audio=True)
            ref.model.train()
            m_a = m_a_o(0.5 * (total_out - pad_audio_out + pad_visual_out))
            m_v = m_v_o(0.5 * (total_out - pad_visual_out + pad_audio_out))
            out_a = 0.5 * (total_out - pad_audio_out + pad_visual_out)
            out_v = 0.5 * (total_out - pad_visual_out + pad_audio_out)
            loss = ref.task_loss(m_a + m_v, uni, label)

            score_audio = score_visual = 0.0
            for k in range(len(label)):
                pa, pv = F.softmax(out_a, 1)[k][label[k]], F.softmax(out_v, 1)[k][label[k]]
                score_audio += -torch.log(torch.tensor(1e-8)) if pa < 1e-8 else -torch.log(pa)
                score_visual += -torch.log(torch.tensor(1e-8)) if pv < 1e-8 else -torch.log(pv)
            score_audio, score_visual = score_audio / len(label), score_visual / len(label)
            ratio_a = math.exp(score_visual.item() - score_audio.item())
            ratio_v = math.exp(score_audio.item() - score_visual.item())
            optimal_ratio_a = math.exp(train_score_v - train_score_a)
            optimal_ratio_v = math.exp(train_score_a - train_score_v)
            coeff_a = math.exp(alpha * min(optimal_ratio_a - ratio_a, 10))
            coeff_v = math.exp(alpha * min(optimal_ratio_v - ratio_v, 10))
            train_score_a = train_score_a * (iteration - 1) / iteration + score_audio.item() / iteration
            train_score_v = train_score_v * (iteration - 1) / iteration + score_visual.item() / iteration

            ref.optimizer.zero_grad(set_to_none=True)
            if modulation_starts <= epoch - 1 <= modulation_ends:  # the code's 1-based window, 0-based fields
                scale["a"], scale["v"] = coeff_a, coeff_v
            loss.backward()
            weights = [p for p in ref.model.fusion.parameters() if p.dim() >= 2]
            ref.fusion_grad_range.append((max(float(torch.max(p.grad)) for p in weights),
                                          min(float(torch.min(p.grad)) for p in weights)))
            if any(torch.max(p.grad) > 1 or torch.min(p.grad) < -1 for p in weights):
                nn.utils.clip_grad_norm_(ref.model.parameters(), max_norm=1.0)
            ref.optimizer.step()
        ref.scheduler.step()
        yield
