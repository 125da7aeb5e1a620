"""UME reference loop, written from the method as Du et al. (ICML 2023) state it (no authors' code was found):
every modality's model -- its encoder and its unimodal head -- is trained ALONE, in its own run with its own
optimizer (same kind and hyperparameters as the trial's) and learning-rate schedule, on its own CE over the
same batches; nothing multimodal is trained. The prediction is the mean of the unimodal logits (`probs`: of
their softmax). Per epoch the modalities' runs go one after another (they share no parameter, so the order
is immaterial); this is what the project's single optimizer over the summed losses must reproduce.

The unimodal head is the model's separate head, or the fused head's block for `fused_block` heads with `sum`
or `late` fusion (their own linear maps; `concat` blocks share a bias, so there are no separate runs).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def head_logits(ref, m, z):
    """Modality m's classifier on its own feature."""
    if ref.unimodal_head == "fused_block":
        return ref.model.fusion.block_logits({m: z}, m)
    return ref.model.heads[m](z)


def own_parameters(ref, m):
    head = ref.model.fusion.fc[m] if ref.unimodal_head == "fused_block" else ref.model.heads[m]
    return [*ref.model.encoder(m).parameters(), *head.parameters()]


def train(ref):
    settings = {k: v for k, v in ref.optimizer.defaults.items() if k in ("lr", "momentum", "weight_decay")}
    opts = {m: type(ref.optimizer)(own_parameters(ref, m), **settings) for m in ref.modalities}
    scheds = {m: torch.optim.lr_scheduler.StepLR(o, step_size=ref.scheduler.step_size, gamma=ref.scheduler.gamma)
              for m, o in opts.items()}
    for epoch in range(ref.num_epochs):
        ref.model.train()
        for m in ref.modalities:  # M separate runs, each over the epoch's batches
            for inputs, labels in ref.batches[epoch]:
                loss = F.cross_entropy(head_logits(ref, m, ref.model.encoder(m)(inputs[m])), labels)
                opts[m].zero_grad(set_to_none=True)
                loss.backward()
                opts[m].step()
            scheds[m].step()
        yield


@torch.no_grad()
def ensemble_scores(ref, inputs, combine="logits"):
    """The ensemble's scores for model-ready inputs (eval mode)."""
    ref.model.eval()
    outs = [head_logits(ref, m, ref.model.encoder(m)(inputs[m])) for m in ref.modalities]
    if combine == "probs":
        outs = [o.softmax(1) for o in outs]
    return sum(outs) / len(outs)
