"""UMT reference loop, written from the method as Du et al. (ICML 2023; arXiv 2106.11059) state it, no authors'
code having been found; cross-checked with GeWu-Lab/BalanceBenchmark `UMT_trainer.py` (commit 4c1482f), whose
teachers come from separate unimodal runs and whose multimodal loss is CE(fused) + scaling * sum_m
MSELoss(teacher feature, student feature). As a plain loop inside one run:

    T = round(teacher_fraction * E), in [1, E - 1]
    epochs [0, T): the unimodal teachers (ref.extra: an encoder and a head per modality, copies of the model's
        initial ones) train on sum_m CE(head_m(enc_m(x_m)), y); the multimodal model is not trained
    epoch T: the teachers are frozen (requires_grad False); `student_init: teacher` copies their encoders into
        the model's
    epochs [T, E): the model trains on the project's plain objective (ref.task_loss) + distill_weight *
        sum_m MSE(z_m, t_m), t_m the frozen teacher's feature under no_grad, the teacher in eval mode
        (`teacher_mode: train`: in train mode, as BalanceBenchmark's teachers run)

One optimizer (ref.optimizer, the trial's) and its StepLR over the whole run; a parameter without a gradient
is left alone by it, so the model rests in the teacher phase and the teachers in the distillation phase.
`ref.frozen_teachers` keeps the teachers' state at the switch for the test.
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F


def train(ref, teacher_fraction=0.5, distill_weight=10.0, teacher_mode="eval", student_init="scratch"):
    teachers = ref.extra
    E = ref.num_epochs
    T = max(1, min(E - 1, math.floor(teacher_fraction * E + 0.5)))
    for epoch in range(E):
        if epoch < T:
            teachers.train()
            for inputs, labels in ref.batches[epoch]:
                loss = sum(F.cross_entropy(teachers.heads[m](teachers.encoders[m](inputs[m])), labels)
                           for m in ref.modalities)
                ref.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                ref.optimizer.step()
        else:
            if epoch == T:
                for p in teachers.parameters():
                    p.requires_grad_(False)
                ref.frozen_teachers = copy.deepcopy(teachers.state_dict())
                if student_init == "teacher":
                    for m in ref.modalities:
                        ref.model.encoder(m).load_state_dict(teachers.encoders[m].state_dict())
            teachers.train(teacher_mode == "train")
            ref.model.train()
            for inputs, labels in ref.batches[epoch]:
                feats, fused, uni = ref.forward(inputs)
                with torch.no_grad():
                    targets = {m: teachers.encoders[m](inputs[m]) for m in ref.modalities}
                distill = sum(F.mse_loss(feats[m], targets[m]) for m in ref.modalities)
                loss = ref.task_loss(fused, uni, labels) + distill_weight * distill
                ref.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                ref.optimizer.step()
        ref.scheduler.step()
        yield
