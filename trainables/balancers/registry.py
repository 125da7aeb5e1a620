"""Balancers by name, plus `package.module:Class` for a researcher's own balancer."""
from __future__ import annotations

import importlib

from trainables.balancers.base import Balancer
from trainables.errors import ConfigError

_BUILTIN = {
    "none": "trainables.balancers.none:NoBalancer",
    "redreg": "trainables.balancers.redreg:RedReg",
    "ogm": "trainables.balancers.ogm:OGM",
    "ogm_ge": "trainables.balancers.ogm:OGMGE",
    "mm": "trainables.balancers.mm:MultimodalMixup",
    "bmm": "trainables.balancers.bmm:BalancedMultimodalMixup",
    "inforeg": "trainables.balancers.inforeg:InfoReg",
    "cal": "trainables.balancers.cal:CAL",
    "pmr": "trainables.balancers.pmr:PMR",
    "agm": "trainables.balancers.agm:AGM",
    "arl": "trainables.balancers.arl:ARL",
    "relearn": "trainables.balancers.relearn:Relearn",
    "mmpareto": "trainables.balancers.mmpareto:MMPareto",
    "gblend": "trainables.balancers.gblend:GBlend",
    "mla": "trainables.balancers.mla:MLA",
    "reconboost": "trainables.balancers.reconboost:ReconBoost",
    "ume": "trainables.balancers.ume:UME",
    "umt": "trainables.balancers.umt:UMT",
}


def balancer_names() -> list[str]:
    return sorted(_BUILTIN)


def balancer_class(name: str) -> type[Balancer]:
    target = _BUILTIN.get(name, name if ":" in name else None)
    if target is None:
        raise ConfigError(
            f"balancer.name: unknown balancer '{name}'; allowed: {', '.join(balancer_names())} "
            "or 'package.module:ClassName'"
        )
    module_name, _, class_name = target.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"balancer.name: cannot import '{target}' ({err})") from None
    if not (isinstance(cls, type) and issubclass(cls, Balancer)):
        raise ConfigError(f"balancer.name: '{target}' is not a subclass of trainables.balancers.base.Balancer")
    return cls


def build_balancer(name: str, params, modalities: list[str]) -> Balancer:
    return balancer_class(name)(params, modalities)
