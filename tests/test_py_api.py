"""``src/python/runtime/py_api.rs`` is the complete list of Python functions the
compiled code calls: each exists, and ``mpm_events._bus.__all__`` lists exactly the
``_bus`` ones (so neither side can drift)."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY_API = ROOT / "src" / "python" / "runtime" / "py_api.rs"


def declared() -> list[tuple[str, str]]:
    return re.findall(r'=\s*"([\w.]+)"\s*\.\s*"(\w+)"\s*;', PY_API.read_text())


def test_every_function_rust_calls_exists():
    pairs = declared()
    assert len(pairs) >= 16
    for module, name in pairs:
        assert callable(getattr(importlib.import_module(module), name)), (module, name)


def test_the_bus_package_lists_exactly_what_rust_calls():
    import mpm_events._bus as bus

    from_rust = {name for module, name in declared() if module == "mpm_events._bus"}
    assert set(bus.__all__) == from_rust


def test_no_other_file_imports_python_by_name():
    # NOTE: the contract lives in one file; other binding files call py_api.
    offenders = [
        str(p.relative_to(ROOT))
        for p in (ROOT / "src" / "python").rglob("*.rs")
        if p != PY_API and re.search(r'"mpm_events\.(_bus|producers)"', p.read_text())
    ]
    assert offenders == []
