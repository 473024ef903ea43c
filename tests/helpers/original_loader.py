"""Load the pure-Python original (``claude_mpm.services.events`` from claude-mpm 5.9.10).

The original package cannot be imported as shipped: ``core`` imports
``interfaces`` at module level and ``interfaces`` imports ``core.Event`` back.
``load_original()`` breaks that cycle in-process, without touching installed
files: it loads ``interfaces`` against a placeholder ``core`` (``interfaces``
only uses ``Event`` in annotations), then loads the real ``core``, points
``interfaces.Event`` at the real class and finally runs the package
``__init__`` so every public name is there.

Used by the compatibility tests and by the benchmark suite.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types

PACKAGE = "claude_mpm.services.events"


def original_available() -> bool:
    """Whether claude-mpm is installed in this environment."""
    return importlib.util.find_spec("claude_mpm") is not None


def load_original() -> types.ModuleType:
    """Import and return ``claude_mpm.services.events`` with its cycle broken."""
    existing = sys.modules.get(PACKAGE)
    if existing is not None and hasattr(existing, "EventBus"):
        return existing

    importlib.import_module("claude_mpm.services")
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.loader is None:
        raise ImportError(f"{PACKAGE} is not installed (pip install --no-deps claude-mpm==5.9.10)")
    package = importlib.util.module_from_spec(spec)
    sys.modules[PACKAGE] = package

    placeholder = types.ModuleType(f"{PACKAGE}.core")
    placeholder.Event = object  # type: ignore[attr-defined]
    sys.modules[f"{PACKAGE}.core"] = placeholder
    try:
        interfaces = importlib.import_module(f"{PACKAGE}.interfaces")
    finally:
        del sys.modules[f"{PACKAGE}.core"]
    core = importlib.import_module(f"{PACKAGE}.core")
    interfaces.Event = core.Event  # type: ignore[attr-defined]
    package.core = core  # type: ignore[attr-defined]
    package.interfaces = interfaces  # type: ignore[attr-defined]

    spec.loader.exec_module(package)
    return package
