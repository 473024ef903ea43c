"""The layering check of ``make lint``: the engine imports no pyo3, the binding
layer's folders import only downward, and no module of ``src/`` is part of an
import circle.

    python tools/check_layers.py              # exit 1 with one line per violation
    python tools/check_layers.py --src DIR    # check another copy of src/

Rules (docs/architecture.md draws them):

* ``src/**`` outside ``src/python/`` (the engine) never mentions ``pyo3`` or
  ``crate::python``.
* ``src/python/`` is built in rooms, bottom to top: ``stub_docs``, ``runtime``,
  ``convert``, ``model``, ``exec``, ``consumers``, ``bus``, ``producer``; a file may
  use its own room and the rooms below it, never one above.
* No circle between files: the graph "file A names an item of file B" over every
  ``crate::...`` path and ``super::`` path is acyclic (rooms may not import each
  other in a circle either, which the order above already forbids).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
if len(sys.argv) == 3 and sys.argv[1] == "--src":
    # NOTE: for the test that checks this check: a copy of src/ with a violation.
    SRC = Path(sys.argv[2]).resolve()
    ROOT = SRC.parent
ROOMS = ["stub_docs", "runtime", "convert", "model", "exec", "consumers", "bus", "producer"]

PATH_RE = re.compile(r"\bcrate::((?:[a-z_][a-z0-9_]*::)*[a-z_][a-z0-9_]*)")
USE_GROUP_RE = re.compile(r"\buse\s+crate::([a-z0-9_:]+)::\{([^;]*)\};", re.S)


def module_of(path: Path) -> tuple[str, ...]:
    """``src/python/model/event.rs`` -> ``("python", "model", "event")``."""
    rel = path.relative_to(SRC).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] in ("mod", "lib"):
        parts = parts[:-1]
    return tuple(parts)


def strip_comments(text: str) -> str:
    text = re.sub(r"//[^\n]*", "", text)
    return re.sub(r"/\*.*?\*/", "", text, flags=re.S)


def referenced(text: str) -> set[tuple[str, ...]]:
    """Every module path named by ``crate::a::b::...`` (the longest prefix that is
    a module is resolved later)."""
    refs: set[tuple[str, ...]] = set()
    for m in USE_GROUP_RE.finditer(text):
        base = tuple(m.group(1).split("::"))
        for item in re.split(r"[,\s]+", m.group(2)):
            item = item.strip()
            if not item or item in ("self", "*"):
                refs.add(base)
                continue
            refs.add(base + tuple(item.split("::")[0:-1] or ()) if "::" in item else base)
            if "::" in item:
                refs.add(base + tuple(item.split("::")[:-1]))
    for m in PATH_RE.finditer(text):
        refs.add(tuple(m.group(1).split("::")))
    return refs


def defines(text: str, name: str) -> bool:
    """Whether ``text`` defines ``name`` itself (not by ``pub use``)."""
    pat = rf"\b(?:struct|enum|fn|type|trait|const|static|mod|macro_rules!)\s+{re.escape(name)}\b"
    return re.search(pat, text) is not None


def items_of(target: tuple[str, ...], ref: tuple[str, ...], text: str) -> list[str]:
    """The item names a file takes from module ``target`` (``*`` for a glob)."""
    path = "crate::" + "::".join(target)
    names: list[str] = []
    for m in re.finditer(rf"{re.escape(path)}::(\{{[^}}]*\}}|[A-Za-z_*][A-Za-z0-9_]*)", text):
        body = m.group(1)
        if body.startswith("{"):
            names += [n.strip().split("::")[0] for n in body[1:-1].split(",") if n.strip()]
        else:
            names.append(body)
    return names


def main() -> int:
    files = sorted(SRC.rglob("*.rs"))
    modules = {module_of(f): f for f in files}
    problems: list[str] = []
    graph: dict[tuple[str, ...], set[tuple[str, ...]]] = {m: set() for m in modules}
    for mod, f in modules.items():
        text = strip_comments(f.read_text())
        rel = f.relative_to(ROOT)
        in_python = mod[:1] == ("python",)
        if not in_python and mod not in {(), ("alloc",)}:
            if re.search(r"\bpyo3\b", text) or "crate::python" in text:
                problems.append(f"{rel}: the engine must not use pyo3 or crate::python")
        if re.search(r"\bsuper::super::", text):
            problems.append(f"{rel}: super::super:: climbs out of its room; use crate::python::")
        for ref in referenced(text):
            # the longest prefix of ref that is a module of ours
            target = None
            for n in range(len(ref), 0, -1):
                if ref[:n] in modules:
                    target = ref[:n]
                    break
            if target is None or target == mod:
                continue
            # a folder's mod.rs naming its own files is not an edge
            if target[: len(mod)] == mod:
                continue
            if mod[: len(target)] == target:
                # NOTE: a file reaching its own folder's re-exports would hide which
                # sibling it uses (and so a circle between siblings): name the file.
                # Items the folder's mod.rs itself defines are fine.
                names = items_of(target, ref, text)
                parent = strip_comments(modules[target].read_text())
                if names and all(defines(parent, n) for n in names):
                    continue
                problems.append(
                    f"{rel}: uses {'::'.join(('crate', *ref))} through its own folder's "
                    "re-exports; name the sibling module"
                )
                continue
            graph[mod].add(target)
            if in_python and target[:1] == ("python",) and len(mod) > 1 and len(target) > 1:
                a, b = mod[1], target[1]
                if a in ROOMS and b in ROOMS and ROOMS.index(b) > ROOMS.index(a):
                    problems.append(
                        f"{rel}: room {a!r} uses {'::'.join(target)} in room {b!r}, above it"
                    )
    # circles between files
    state: dict[tuple[str, ...], int] = {}
    stack: list[tuple[str, ...]] = []

    def visit(m: tuple[str, ...]) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(graph.get(m, ())):
            if state.get(t) == 1:
                cycle = [*stack[stack.index(t) :], t]
                problems.append("import circle: " + " -> ".join("::".join(c) for c in cycle))
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    for p in problems:
        print(p)
    if problems:
        print(f"{len(problems)} layering problem(s)", file=sys.stderr)
        return 1
    print(f"layering ok: {len(modules)} modules, {sum(map(len, graph.values()))} edges")
    return 0


if __name__ == "__main__":
    sys.exit(main())
