"""Load the two implementations the suite compares, behind one module-like shape.

Each implementation is a ``types.SimpleNamespace`` with the attributes every workload
uses: ``EventBus, Event, EventPriority, ConsumerConfig, IEventConsumer,
HookEventProducer, ConsumerPriority`` (plus ``MetricsConsumer`` when present), and
``label``/``version``. The workloads only ever touch these names, so the same code runs
against both.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import sys
import types
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TESTS = REPO / "tests"

REQUIRED = (
    "EventBus",
    "Event",
    "EventPriority",
    "ConsumerConfig",
    "IEventConsumer",
    "HookEventProducer",
    "ConsumerPriority",
)
OPTIONAL = ("MetricsConsumer",)

ORIGINAL = "original"
OURS = "ours"
NAMES = (ORIGINAL, OURS)


@dataclass
class Loaded:
    """Result of loading one implementation: the namespace, or why it is not available."""

    name: str
    impl: types.SimpleNamespace | None
    version: str | None
    reason: str | None = None

    @property
    def available(self) -> bool:
        return self.impl is not None


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _namespace(name: str, module: types.ModuleType, extra: types.ModuleType | None) -> Loaded:
    attrs: dict[str, object] = {}
    missing = []
    for attr in REQUIRED + OPTIONAL:
        value = getattr(module, attr, None)
        if value is None and extra is not None:
            value = getattr(extra, attr, None)
        if value is None:
            if attr in REQUIRED:
                missing.append(attr)
            continue
        attrs[attr] = value
    dist = "claude-mpm" if name == ORIGINAL else "mpm-events"
    version = _version(dist)
    if missing:
        return Loaded(name, None, version, f"missing {', '.join(missing)}")
    return Loaded(name, types.SimpleNamespace(label=name, version=version, **attrs), version)


def load_original() -> Loaded:
    """``claude_mpm.services.events`` via ``tests/helpers/original_loader.py`` (which breaks
    its import cycle)."""
    if str(TESTS) not in sys.path:
        sys.path.insert(0, str(TESTS))
    try:
        from helpers import original_loader

        module = original_loader.load_original()
    except Exception as exc:
        return Loaded(ORIGINAL, None, _version("claude-mpm"), f"{type(exc).__name__}: {exc}")
    return _namespace(ORIGINAL, module, getattr(module, "interfaces", None))


def load_ours() -> Loaded:
    """``mpm_events``; not available until the engine exports the whole API."""
    try:
        module = importlib.import_module("mpm_events")
    except Exception as exc:
        return Loaded(OURS, None, _version("mpm-events"), f"{type(exc).__name__}: {exc}")
    try:
        extra = importlib.import_module("mpm_events.interfaces")
    except Exception:
        extra = None
    return _namespace(OURS, module, extra)


def load(name: str) -> Loaded:
    return load_original() if name == ORIGINAL else load_ours()
