"""mpm-events: a Rust-powered event bus for Python."""

from mpm_events._core import __version__

__all__ = ["__version__"]
