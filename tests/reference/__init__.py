"""Reference training loops for the golden-trajectory tests, one module per balancer.

Each is written from the authors' public code (repository and commit named in its docstring) as a plain
loop over `ref.batches` -- forward, loss, backward, the method's step, optimizer step -- and never imports
the project's balancer. The loop's shared parts live here, once: `backward_passes` (the plain forward, loss
and backward of every batch of an epoch, for methods that act on the gradients), `plain_epoch`, `plain` (the
loop with no method: the baseline the harness is tested on) and `true_class_score` (the OGM-GE / InfoReg
confidence score).
"""
from __future__ import annotations

import torch


def backward_passes(ref, epoch: int):
    """The plain steps of `epoch` up to the gradients: the model in training mode, then per batch the forward,
    the plain objective and its backward; yields (inputs, labels, features, unimodal logits) with the
    gradients in place, and the caller ends the step (`ref.optimizer.step()`) after its own work on them."""
    ref.model.train()
    for inputs, labels in ref.batches[epoch]:
        feats, fused, uni = ref.forward(inputs)
        loss = ref.task_loss(fused, uni, labels)
        ref.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        yield inputs, labels, feats, uni


def plain_epoch(ref, epoch: int) -> None:
    """One epoch of joint training with no method, then the learning-rate schedule's step."""
    for _ in backward_passes(ref, epoch):
        ref.optimizer.step()
    ref.scheduler.step()


def plain(ref):
    """Joint training with no balancer (the `none` baseline)."""
    for epoch in range(ref.num_epochs):
        plain_epoch(ref, epoch)
        yield


def true_class_score(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The batch sum of the true-class softmax, summed sample by sample as Python floats (float64), as the
    OGM-GE and InfoReg code computes its per-modality score."""
    probs = torch.softmax(logits.detach(), 1)
    return sum(float(probs[i][labels[i]]) for i in range(len(labels)))
