"""The stub's documentation is what ``help()`` shows on the compiled classes.

``python/mpm_events/_core.pyi`` is the one place the Python documentation is
written; ``tools/stub_docs.py`` copies it into ``src/python/stub_docs.rs``, which
the binding code uses as ``#[doc = stub_doc!(...)]``. These tests fail when a
class or method the stub documents shows other text at runtime, or when the
generated file is older than the stub.
"""

from __future__ import annotations

import importlib.util
import inspect
import pydoc
import subprocess
import sys
from pathlib import Path

import mpm_events
import pytest
from mpm_events import _core

ROOT = Path(__file__).resolve().parent.parent
TOOL = ROOT / "tools" / "stub_docs.py"


def _load_tool():
    spec = importlib.util.spec_from_file_location("stub_docs", TOOL)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


stub_docs = _load_tool()
ENTRIES = stub_docs.collect()


def _stub_doc(cls: str, member: str | None = None) -> str:
    return next(doc for c, m, doc in ENTRIES if c == cls and m == member)


def test_the_stub_documents_the_public_classes():
    documented = {cls for cls, member, _ in ENTRIES if member is None}
    public = {
        name
        for name in mpm_events.__all__
        if isinstance(getattr(mpm_events, name), type)
        and getattr(mpm_events, name).__module__ == "mpm_events._core"
    }
    assert public <= documented, public - documented
    assert len(ENTRIES) > len(documented)  # methods too, not only classes


@pytest.mark.parametrize(
    ("cls", "member", "doc"),
    ENTRIES,
    ids=[cls if member is None else f"{cls}.{member}" for cls, member, _ in ENTRIES],
)
def test_runtime_doc_is_the_stubs(cls: str, member: str | None, doc: str):
    obj = getattr(_core, cls)
    if member is not None:
        # The class's own attribute (not one inherited from a base or from object).
        assert member in vars(obj), f"{cls}.{member} is documented but not defined at runtime"
        obj = getattr(obj, member)
    assert inspect.getdoc(obj) == doc


def test_help_shows_the_stub_text():
    text = pydoc.render_doc(mpm_events.EventBus, renderer=pydoc.plaintext)
    # pydoc indents the class body with " |  " and each method's doc four more.
    lines = [line.removeprefix(" |  ").removeprefix("    ").rstrip() for line in text.splitlines()]
    body = "\n".join(lines)
    for method in ("publish", "stop"):
        doc = _stub_doc("EventBus", method)
        assert doc in body, f"help(EventBus) lacks the stub's text for {method}"
    assert _stub_doc("EventBus").splitlines()[0] in body
    # The signature still comes first (pyo3's __text_signature__).
    assert "stop(self, /, timeout=None)" in text


def test_generated_file_is_up_to_date():
    result = subprocess.run(
        [sys.executable, str(TOOL), "--check"], capture_output=True, text=True, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
