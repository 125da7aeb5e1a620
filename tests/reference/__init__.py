"""Reference training loops for the golden-trajectory tests, one module per balancer.

Each is written from the authors' public code (repository and commit named in its docstring) as a plain
loop over `ref.batches` -- forward, loss, backward, the method's step, optimizer step -- and never imports
the project's balancer. `plain` below is the loop with no method: the baseline the harness is tested on.
"""
from __future__ import annotations


def plain(ref):
    """Joint training with no balancer (the `none` baseline)."""
    for epoch in range(ref.num_epochs):
        ref.model.train()
        for inputs, labels in ref.batches[epoch]:
            _, fused, uni = ref.forward(inputs)
            loss = ref.task_loss(fused, uni, labels)
            ref.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            ref.optimizer.step()
        ref.scheduler.step()
        yield
