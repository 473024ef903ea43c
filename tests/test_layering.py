"""``tools/check_layers.py`` (run by ``make lint``) passes on the tree and catches
what it forbids: an engine module using pyo3, a room importing a room above it,
and a circle between two files."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TOOL = ROOT / "tools" / "check_layers.py"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(TOOL), *args], capture_output=True, text=True, timeout=60
    )


def test_the_tree_is_layered():
    out = run()
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.startswith("layering ok")


@pytest.mark.parametrize(
    ("file", "line", "words"),
    [
        ("dispatch.rs", "use pyo3::prelude::*;", "must not use pyo3"),
        ("python/model/event.rs", "use crate::python::bus::EventBus;", "above it"),
        ("python/convert/text.rs", "use crate::python::model::event::Payload;", "above it"),
        ("python/model/event.rs", "use crate::python::model::accepted::AcceptedEvent;", "circle"),
        ("python/exec/inbox.rs", "use crate::python::exec::*;", "re-exports"),
    ],
)
def test_a_violation_is_reported(tmp_path, file, line, words):
    src = tmp_path / "src"
    shutil.copytree(ROOT / "src", src)
    target = src / file
    target.write_text(line + "\n" + target.read_text())
    out = run("--src", str(src))
    assert out.returncode == 1, out.stdout
    assert words in out.stdout, out.stdout
    assert file in out.stdout or "circle" in words
