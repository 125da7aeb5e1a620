"""Runs are data, not code: which balancer plug-ins (`package.module:Class`) may be imported.

A plug-in path is imported when it comes from the user's own command line or config. One that comes from a
record this command did not create -- a study folder's study.json, an MLflow run's tags, both writable by
anyone with access to the shared storage or tracking server -- is refused before anything is imported,
unless the user allows it for this command (`--allow-plugin`). The registry asks `check_import` before every
plug-in import, so no path through validation can import from a record unasked.
"""
from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Iterable, Iterator

from trainables.errors import ConfigError


@dataclass
class _Record:
    source: str
    given: frozenset[str]
    refused: list[str] = field(default_factory=list)


_RECORD: ContextVar[_Record | None] = ContextVar("mmstudy_config_from_a_record", default=None)
_ALLOWED: ContextVar[bool] = ContextVar("mmstudy_plugins_allowed", default=False)


class PluginRefused(ConfigError):
    """A plug-in path named by a record this command did not create (`path`: what would be imported)."""

    def __init__(self, path: str, source: str):
        self.path, self.source = path, source
        super().__init__(f"balancer.name: {source} names the plug-in '{path}', which would be imported (run as code) "
                         "on this machine; mmstudy imports plug-ins only from your own command line or config "
                         "(allowed: a registered balancer name, or --allow-plugin if you trust that record)")


def check_import(path: str) -> None:
    """The rule, asked by the registry before it imports the plug-in `path`."""
    record = _RECORD.get()
    if record is None or _ALLOWED.get() or path in record.given:
        return
    record.refused.append(path)
    raise PluginRefused(path, record.source)


@contextmanager
def config_from_record(source: str, given: Iterable[str | None] = ()) -> Iterator[None]:
    """Validate a config read from `source` (e.g. "runs/x/study.json"): any plug-in path it names, except those
    in `given` (the user's own command line), is refused with one PluginRefused naming it -- whatever error the
    validation turned the refusal into on its way out."""
    record = _Record(source, frozenset(g for g in given if g))
    token = _RECORD.set(record)
    try:
        yield
    except Exception:
        if record.refused:
            raise PluginRefused(record.refused[0], source) from None
        raise
    finally:
        _RECORD.reset(token)
    if record.refused:  # a caller inside swallowed the refusal: it still stands
        raise PluginRefused(record.refused[0], source)


@contextmanager
def plugins_allowed(allowed: bool) -> Iterator[None]:
    """`--allow-plugin`: for this command, plug-in paths from records are imported too."""
    token = _ALLOWED.set(bool(allowed))
    try:
        yield
    finally:
        _ALLOWED.reset(token)
