"""Joint training: the baseline every balancer is compared with."""
from trainables.balancers.base import Balancer


class NoBalancer(Balancer):
    """Cross-entropy on the fused logits (plus unimodal CEs under `multimodal+unimodal`); no intervention."""

    name = "none"
