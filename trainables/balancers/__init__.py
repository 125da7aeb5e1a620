"""Balancers: plug-ins of the trainer, one per file, each built from small pure functions."""
from trainables.balancers.base import Balancer, State
from trainables.balancers.registry import balancer_class, balancer_names, build_balancer

__all__ = ["Balancer", "State", "balancer_class", "balancer_names", "build_balancer"]
