"""The bus's interfaces: priorities and the abstract producer, consumer and bus.

These are the same names, members and abstract methods as the original
``claude_mpm.services.events.interfaces``, so code written against it only
changes its import line.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from enum import Enum

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from mpm_events._core import ConsumerConfig, Event

__all__ = [
    "ConsumerConfig",
    "ConsumerPriority",
    "EventPriority",
    "IEventBus",
    "IEventConsumer",
    "IEventProducer",
]


class EventPriority(Enum):
    """Priority of an event: events leave the queue highest priority (lowest value) first."""

    CRITICAL = 1
    HIGH = 2
    NORMAL = 3
    LOW = 4


class ConsumerPriority(Enum):
    """Priority of a consumer: each event reaches its consumers CRITICAL first."""

    CRITICAL = 1
    HIGH = 2
    NORMAL = 3
    LOW = 4
    DEFERRED = 5


class IEventProducer(ABC):
    """Interface for event producers."""

    @abstractmethod
    async def publish(self, event: Event) -> bool:
        """Publish one event; True if the bus accepted it."""

    @abstractmethod
    async def publish_batch(self, events: list[Event]) -> int:
        """Publish several events; returns how many were accepted."""

    @property
    @abstractmethod
    def source_name(self) -> str:
        """The name this producer puts in each event's ``source``."""


class IEventConsumer(ABC):
    """Interface for event consumers; subclass it and subscribe an instance to the bus.

    ``consume``/``consume_batch`` may be ``async def`` or plain ``def`` methods: the
    bus runs coroutine methods on the event loop that started it and plain methods
    on a worker thread of their own, so a blocking consumer never stalls the others.
    """

    @abstractmethod
    async def initialize(self) -> bool:
        """Prepare the consumer; return False to refuse the subscription."""

    @abstractmethod
    async def consume(self, event: Event) -> bool:
        """Handle one event; return True on success (False or an exception is retried)."""

    @abstractmethod
    async def consume_batch(self, events: list[Event]) -> int:
        """Handle a batch (``batch_size > 1``); return how many succeeded, in order."""

    @abstractmethod
    async def shutdown(self) -> None:
        """Release resources; called by ``unsubscribe`` and ``stop``."""

    @property
    @abstractmethod
    def config(self) -> ConsumerConfig:
        """The consumer's configuration (name, topics, priority, batching, retries)."""

    @property
    @abstractmethod
    def is_healthy(self) -> bool:
        """Whether the consumer is healthy."""

    @abstractmethod
    def get_metrics(self) -> dict[str, Any]:
        """The consumer's own metrics."""


class IEventBus(ABC):
    """Interface for the event bus (implemented by :class:`mpm_events.EventBus`)."""

    @abstractmethod
    async def start(self) -> None:
        """Start delivering events."""

    @abstractmethod
    async def stop(self) -> None:
        """Drain what is queued, then shut every consumer down."""

    @abstractmethod
    async def publish(self, event: Event) -> bool:
        """Queue one event; True if accepted."""

    @abstractmethod
    async def subscribe(self, consumer: IEventConsumer) -> bool:
        """Add a consumer; True if it was initialized and registered."""

    @abstractmethod
    async def unsubscribe(self, consumer_name: str) -> bool:
        """Remove a consumer by name, calling its ``shutdown()``."""

    @abstractmethod
    def get_consumers(self) -> list[IEventConsumer]:
        """The subscribed consumers."""

    @abstractmethod
    def get_metrics(self) -> dict[str, Any]:
        """Bus metrics."""

    @property
    @abstractmethod
    def is_running(self) -> bool:
        """Whether the bus is running."""


def __getattr__(name: str) -> Any:
    # NOTE: ConsumerConfig lives in the compiled module, which imports this one at
    # runtime for the enums; a lazy attribute avoids an import cycle.
    if name == "ConsumerConfig":
        from mpm_events._core import ConsumerConfig

        return ConsumerConfig
    raise AttributeError(name)


def _register_ours() -> None:
    """Makes our compiled classes virtual subclasses of the interfaces they implement.

    NOTE: done here, when this module is first imported, rather than in the package's
    ``__init__``: ``import mpm_events`` loads this module (and ``enum``, ~7 ms) only
    when one of its names is used, and ``isinstance`` against an interface needs the
    interface, so the registrations are always in place when they can matter.
    """
    from mpm_events import _core

    IEventBus.register(_core.EventBus)
    for consumer in (
        _core.MetricsConsumer,
        _core.LoggingConsumer,
        _core.DeadLetterConsumer,
        _core.SocketIOConsumer,
        _core.HttpConsumer,
    ):
        IEventConsumer.register(consumer)
    IEventProducer.register(_core.HookEventProducer)


_register_ours()
