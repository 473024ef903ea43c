"""Where a command reads: a running monitor (``--monitor URL``) or a shared log
(``--backend URL``, else ``$MPM_EVENTS_BACKEND``, else the hook command's default
SQLite log), and the one error type the commands raise."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass


class CliError(Exception):
    """One line for stderr and the exit status (1: the target cannot be used)."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


def usage(message: str) -> CliError:
    """A bad combination of flags: exit 2, as argparse's own errors."""
    return CliError(message, status=2)


@dataclass(frozen=True)
class Target:
    """Exactly one of ``monitor`` (a :class:`~mpm_events._cli.monitor.Monitor`) or
    ``backend`` (a log URL) is set."""

    backend: str | None = None
    monitor: object | None = None


def resolve(args: argparse.Namespace, *, must_exist: bool = True) -> Target:
    """The command's target. A SQLite log that does not exist is an error (reading
    commands must not create an empty log where the user expected theirs).

    Raises:
        CliError: A monitor URL that is not http(s), a missing log file.
    """
    if getattr(args, "monitor", None):
        from mpm_events._cli.monitor import Monitor

        return Target(monitor=Monitor(args.monitor))
    from mpm_events.__main__ import default_backend

    url = args.backend or default_backend()
    if "://" not in url and not url.startswith("sqlite:") and url != "memory":
        # NOTE: a bare path is a SQLite log, as EventBus(backend=...) takes it.
        url = "sqlite://" + os.path.abspath(url)
    if url.startswith(("redis://", "rediss://")):
        return Target(backend=url)
    if not url.startswith("sqlite:"):
        raise CliError(
            f"backend {url!r} is not a shared log: expected sqlite:///path/to/events.db "
            "or redis://host:port/0"
        )
    path = url[len("sqlite://") :] if url.startswith("sqlite://") else url[len("sqlite:") :]
    path = path.split("?", 1)[0]
    if must_exist and not os.path.isfile(path):
        raise CliError(f"no event log at {path} (nothing published there yet?)")
    return Target(backend=url)


def log_call(backend: str, fn, *args, **kwargs):
    """``fn(backend, ...)`` (a ``_core._log_*`` function), its errors as one line.

    Raises:
        CliError: The log cannot be opened or used (status 1), bad arguments (2).
    """
    from mpm_events.errors import EventBusError

    try:
        return fn(backend, *args, **kwargs)
    except ValueError as exc:
        raise CliError(f"{backend}: {exc}", status=2) from None
    except (EventBusError, OSError) as exc:
        raise CliError(f"cannot use the log {backend}: {exc}") from None
