"""MLA reference loop, written from Cecile-hi/Multimodal-Learning-with-Alternating-Unimodal-Adaptation (commit
ab6c184, main.py `train_epoch`, branch `gs_flag`, and utils/utils.py `GSPlugin.before_update`) as a plain
loop: per batch one forward of every encoder (the code's `a, v = model(spec, image)`), then per modality in
order: fc_out(z_m), CE, backward, the plugin's projection of fc_out.weight's gradient (never on the first
turn of the run), optimizer step, turn counter + 1. `projection=False` is the code as it runs (its name test
`n == "module.weight"` never matches an nn.Linear); `projection=True` runs the plugin's update with the scalar
denominator alpha + r k. The code keeps the head input's graph in P; here r is detached.

Project additions, the same on both sides by construction of the comparison: the model's own heads
(`unimodal_logits`, probes under `multimodal`) add their CE to modality m's turn, and the fusion head is a
probe on the detached features added to the last turn.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def train(ref, projection=False, projection_alpha=0.1):
    fc_out = ref.extra  # the shared head
    Pl = torch.eye(fc_out.weight.shape[1])
    exp_count = 0
    for epoch in range(ref.num_epochs):
        ref.model.train()
        fc_out.train()
        len_dataloader = len(ref.batches[epoch])
        for batch_step, (inputs, label) in enumerate(ref.batches[epoch]):
            z = {m: ref.model.encoder(m)(inputs[m]) for m in ref.modalities}
            own = ref.model.unimodal_logits(z, detach_probe=ref.loss_setting == "multimodal")
            probe = ref.model.fuse({m: z[m].detach() for m in ref.modalities})
            for turn, m in enumerate(ref.modalities):
                out = fc_out(z[m])
                loss = F.cross_entropy(out, label) + F.cross_entropy(own[m], label)
                if turn == len(ref.modalities) - 1:
                    loss = loss + F.cross_entropy(probe, label)
                ref.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if projection and exp_count != 0:
                    lamda = batch_step / len_dataloader + 1
                    alpha = 1.0 * projection_alpha ** lamda
                    r = torch.mean(z[m].detach(), 0, True)
                    k = torch.mm(Pl, torch.t(r))
                    Pl = torch.sub(Pl, torch.mm(k, torch.t(k)) / (alpha + torch.mm(r, k)))
                    Pl = Pl / torch.norm(Pl, p="fro")
                    fc_out.weight.grad = torch.mm(fc_out.weight.grad, torch.t(Pl))
                ref.optimizer.step()
                exp_count += 1
        ref.scheduler.step()
        ref.P, ref.turns = Pl, exp_count
        yield
