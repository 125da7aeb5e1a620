"""Dataset plug-ins by name: each has a params model (validated in the trial config) and a builder."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

from pydantic import BaseModel

from trainables.errors import ConfigError
from trainables.data.base import DatasetBundle

_DATASETS: dict[str, tuple[type[BaseModel], Callable[[BaseModel], DatasetBundle]]] = {}
_LAYOUTS: dict[str, type] = {}  # file-backed datasets: name -> Layout class (what `mmstudy prepare` reads)


def register_dataset(name: str, params: type[BaseModel], build: Callable[[BaseModel], DatasetBundle],
                     layout: type | None = None) -> None:
    _DATASETS[name] = (params, build)
    if layout is not None:
        _LAYOUTS[name] = layout


@contextmanager
def registered_dataset(name: str, params: type[BaseModel], build: Callable[[BaseModel], DatasetBundle]
                       ) -> Iterator[None]:
    """A dataset plug-in registered only inside the block (a test's own data): the registry is left as it
    was, so other code never sees it in its list of allowed datasets."""
    previous = _DATASETS.get(name)
    register_dataset(name, params, build)
    try:
        yield
    finally:
        if previous is None:
            _DATASETS.pop(name, None)
        else:
            _DATASETS[name] = previous


def dataset_layout(name: str):
    """The Layout class of a file-backed dataset (ConfigError for generated ones such as synthetic)."""
    _ensure_builtin()
    if name not in _LAYOUTS:
        raise ConfigError(f"DATASET: '{name}' has no files to prepare; allowed: {', '.join(sorted(_LAYOUTS))}")
    return _LAYOUTS[name]


def _ensure_builtin() -> None:
    from trainables.data import cmu_mosi, crema_d, kinetics_sounds, synthetic, ucf101  # noqa: F401  (each registers itself)


def dataset_names() -> list[str]:
    _ensure_builtin()
    return sorted(_DATASETS)


def dataset_params_model(name: str) -> type[BaseModel]:
    _ensure_builtin()
    if name not in _DATASETS:
        raise ConfigError(f"dataset.name: unknown dataset '{name}'; allowed: {', '.join(dataset_names())}")
    return _DATASETS[name][0]


def build_dataset(name: str, params: BaseModel) -> DatasetBundle:
    _ensure_builtin()
    bundle = _DATASETS[name][1](params)
    bundle.spec = {"name": name, **params.model_dump(mode="json")}
    return bundle
