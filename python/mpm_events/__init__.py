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
)
from mpm_events.interfaces import (
    ConsumerPriority,
    EventPriority,
    IEventBus,
    IEventConsumer,
    IEventProducer,
)
from mpm_events.producers import HookEventProducer, SystemEventProducer

# NOTE: the package stays silent unless the application configures logging; the
# NullHandler is attached when the first bus is made (see mpm_events._log).

IEventBus.register(EventBus)

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
    "SocketIOConsumer",
    "SystemEventProducer",
    "__version__",
]

IEventConsumer.register(MetricsConsumer)
IEventConsumer.register(LoggingConsumer)
IEventConsumer.register(DeadLetterConsumer)
IEventConsumer.register(SocketIOConsumer)
IEventConsumer.register(HttpConsumer)
IEventProducer.register(HookEventProducer)
