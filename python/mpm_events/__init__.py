"""mpm-events: an event bus for Python whose engine is Rust.

A drop-in replacement for ``claude_mpm.services.events``: change the import
line and the rest of the code stays as it is::

    from mpm_events import EventBus, HookEventProducer
"""

from __future__ import annotations

from mpm_events._core import (
    ConsumerConfig,
    DeadLetterConsumer,
    Event,
    EventBus,
    EventMetadata,
    HttpConsumer,
    LoggingConsumer,
    MetricsConsumer,
    Rule,
    SocketIOConsumer,
    __version__,
)
from mpm_events.errors import (
    ConsumerConfigError,
    EventBusError,
    InvalidEventError,
    InvalidRuleError,
    InvalidTopicError,
    PersistenceError,
    SchemaValidationError,
)

# NOTE: the interfaces (abc classes and enums: ``enum`` alone costs several ms) and
# the Python producers load on first use (PEP 562), so that ``import mpm_events``
# stays cheap for a process that only needs the engine (``mpm-events hook`` runs once
# per Claude Code hook). ``mpm_events.interfaces`` registers our compiled classes with
# its ABCs when it loads. The package stays silent unless the application configures
# logging; the NullHandler is attached when the first bus is made (mpm_events._log).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from mpm_events.interfaces import (
        ConsumerPriority,
        EventPriority,
        IEventBus,
        IEventConsumer,
        IEventProducer,
    )
    from mpm_events.producers import HookEventProducer, SystemEventProducer

_LAZY = {
    "ConsumerPriority": "mpm_events.interfaces",
    "EventPriority": "mpm_events.interfaces",
    "IEventBus": "mpm_events.interfaces",
    "IEventConsumer": "mpm_events.interfaces",
    "IEventProducer": "mpm_events.interfaces",
    "HookEventProducer": "mpm_events.producers",
    "SystemEventProducer": "mpm_events.producers",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'mpm_events' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "ConsumerConfig",
    "ConsumerConfigError",
    "ConsumerPriority",
    "DeadLetterConsumer",
    "Event",
    "EventBus",
    "EventBusError",
    "EventMetadata",
    "EventPriority",
    "HookEventProducer",
    "HttpConsumer",
    "IEventBus",
    "IEventConsumer",
    "IEventProducer",
    "InvalidEventError",
    "InvalidRuleError",
    "InvalidTopicError",
    "LoggingConsumer",
    "MetricsConsumer",
    "PersistenceError",
    "Rule",
    "SchemaValidationError",
    "SocketIOConsumer",
    "SystemEventProducer",
    "__version__",
]
