"""Balancers by name, plus `package.module:Class` for a researcher's own balancer."""
from __future__ import annotations

import importlib
import re

from trainables.balancers.base import Balancer
from trainables.balancers.plugin_trust import check_import
from trainables.errors import ConfigError

# An importable absolute module path: identifiers joined by dots (no relative or empty module).
_DOTTED = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")

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


def is_plugin_path(name: str) -> bool:
    """`package.module:ClassName` (anything with a colon that is not a registered name)."""
    return name not in _BUILTIN and ":" in name


def balancer_class(name: str) -> type[Balancer]:
    target = _BUILTIN.get(name, name if is_plugin_path(name) else None)
    if target is None:
        raise ConfigError(
            f"balancer.name: unknown balancer '{name}'; allowed: {', '.join(balancer_names())} "
            "or 'package.module:ClassName'"
        )
    module_name, _, class_name = target.partition(":")
    if not (_DOTTED.fullmatch(module_name) and class_name.isidentifier()):
        raise ConfigError(f"balancer.name: '{name}' is not a plug-in path (allowed: {', '.join(balancer_names())} "
                          "or 'package.module:ClassName')")
    if name not in _BUILTIN:
        check_import(target)  # a path from a record this command did not create is refused before any import
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"balancer.name: cannot import '{target}' ({err})") from None
    if not (isinstance(cls, type) and issubclass(cls, Balancer)):
        raise ConfigError(f"balancer.name: '{target}' is not a subclass of trainables.balancers.base.Balancer")
    return cls


def build_balancer(name: str, params, modalities: list[str]) -> Balancer:
    return balancer_class(name)(params, modalities)
