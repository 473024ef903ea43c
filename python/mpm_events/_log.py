"""The package's logger, made on first use (private).

``import mpm_events`` does not import :mod:`logging` (it costs more than the rest
of the package in a short-lived hook process); the logger and its
``NullHandler``, which keeps the package silent unless the application configures
logging, are set up the first time the bus is created or logs.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    import logging

_logger: logging.Logger | None = None


def logger() -> logging.Logger:
    """The ``mpm_events`` logger, with a ``NullHandler`` attached once."""
    global _logger
    if _logger is None:
        import logging

        log = logging.getLogger("mpm_events")
        if not any(isinstance(h, logging.NullHandler) for h in log.handlers):
            log.addHandler(logging.NullHandler())
        _logger = log
    return _logger
