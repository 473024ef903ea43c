"""The exceptions raised by mpm-events, all rooted at :class:`EventBusError`.

Each also derives from the built-in exception a caller would expect
(``ValueError`` for a bad topic, ``TypeError`` for something that is not an
event), so ``except ValueError`` keeps working.
"""

from __future__ import annotations

__all__ = [
    "ConsumerConfigError",
    "EventBusError",
    "InvalidEventError",
    "InvalidRuleError",
    "InvalidTopicError",
    "PersistenceError",
    "SchemaValidationError",
]


class EventBusError(Exception):
    """Base class of every exception raised by mpm-events."""


class InvalidTopicError(EventBusError, ValueError):
    """A topic or pattern is malformed (empty segment, misplaced wildcard, ...)."""


class InvalidEventError(EventBusError, TypeError):
    """An object given as an event is not one (wrong type, missing attribute, bad field)."""


class InvalidRuleError(EventBusError, ValueError):
    """A content rule does not compile; the message names the JSON path of the problem."""


class ConsumerConfigError(EventBusError, ValueError):
    """A consumer or its configuration cannot be subscribed as given."""


class SchemaValidationError(EventBusError, ValueError):
    """A payload does not match the schema registered for its topic
    (``EventBus.register_schema``); the message names the JSON path and the keyword
    that failed, and ``errors`` lists every violation as dicts of ``path``,
    ``keyword`` and ``message`` (``failed``: the indexes, for ``publish_batch``)."""

    errors: list[dict[str, str]]
    failed: list[int]


class PersistenceError(EventBusError):
    """The event store cannot be opened or written."""
