"""The built extension: abi3, no OpenSSL, stubs and markers shipped."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import mpm_events
import pytest
from mpm_events import _core

PACKAGE = Path(mpm_events.__file__).parent


def test_extension_needs_no_openssl() -> None:
    if shutil.which("ldd") is None:
        pytest.skip("ldd is not available")
    out = subprocess.run(["ldd", _core.__file__], capture_output=True, text=True, check=True).stdout
    linked = out.lower()
    assert "libssl" not in linked and "libcrypto" not in linked, out
    assert "libpython" not in linked, f"an abi3 extension must not link libpython:\n{out}"


def test_extension_is_abi3_and_typed() -> None:
    assert ".abi3." in Path(_core.__file__).name
    assert (PACKAGE / "py.typed").is_file()
    assert (PACKAGE / "_core.pyi").is_file()


def test_version_comes_from_cargo_toml() -> None:
    cargo = (Path(__file__).parent.parent / "Cargo.toml").read_text()
    line = next(x for x in cargo.splitlines() if x.startswith("version = "))
    assert mpm_events.__version__ == line.split('"')[1]


def test_public_names() -> None:
    for name in mpm_events.__all__:
        assert hasattr(mpm_events, name), name
    from mpm_events.interfaces import ConsumerPriority, IEventBus

    assert ConsumerPriority.DEFERRED.value == 5
    assert isinstance(mpm_events.EventBus(), IEventBus)


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="Linux only")
def test_allocator_arena_is_kept_out_of_huge_pages() -> None:
    """The extension gives mimalloc a 1 GiB arena advised MADV_NOHUGEPAGE (flag "nh"),
    and only that mapping: the host's own memory keeps its huge-page setting."""
    code = (
        "import re, mpm_events\n"
        "n = 0\n"
        "for block in re.split(r'\\n(?=[0-9a-f]+-[0-9a-f]+ )', open('/proc/self/smaps').read()):\n"
        "    a, b = (int(x, 16) for x in block.split()[0].split('-'))\n"
        "    flags = re.search(r'VmFlags:(.*)', block).group(1).split()\n"
        "    if b - a == 1 << 30 and 'nh' in flags:\n"
        "        n += 1\n"
        "print(n)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "1"
