"""Type stubs for ``mpm_events._core``, the compiled Rust engine.

Import these names from :mod:`mpm_events`, not from ``_core`` (a private module).

Topic patterns (consumer ``topics`` and :meth:`Event.matches_topic`):

* A topic is one or more non-empty segments separated by ``.`` (``hook.tool``), with
  no whitespace or control characters. A *published* topic cannot contain ``*``.
* ``*`` matches exactly one segment: ``hook.*`` matches ``hook.response`` but not
  ``hook`` nor ``hook.tool.usage``.
* ``**`` matches zero or more whole segments: ``hook.**`` matches ``hook``,
  ``hook.response`` and ``hook.tool.usage``; ``a.**.b`` matches ``a.b`` and
  ``a.x.y.b``; ``**`` matches every topic.
* A wildcard must be a whole segment: ``a.**b`` or ``hook*`` raises
  :class:`~mpm_events.errors.InvalidTopicError` (a ``ValueError``) naming the problem,
  as does an empty topic or an empty segment (``a..b``, ``.a``, ``a.``).
"""

import asyncio
import os
import pathlib
from collections.abc import Awaitable, Callable, Coroutine, Generator, Iterable
from datetime import datetime, timedelta
from re import Pattern
from typing import Any, Literal, Protocol, Self, TypeVar, final, type_check_only

from typing_extensions import disjoint_base

from mpm_events.interfaces import (
    ConsumerPriority,
    EventPriority,
    IEventBus,
    IEventConsumer,
    IEventProducer,
)

_T_co = TypeVar("_T_co", covariant=True)

# NOTE: the names the compiled module lists (pyo3 fills __all__ as it adds them).
__all__ = [
    "ConsumerConfig",
    "DeadLetterConsumer",
    "Event",
    "EventBus",
    "EventMetadata",
    "HookEventProducer",
    "HttpConsumer",
    "LoggingConsumer",
    "MetricsConsumer",
    "Rule",
    "SocketIOConsumer",
    "_Job",
    "_JobSource",
    "_Leaving",
    "_NativeConsumer",
    "_Pending",
    "_Ready",
    "_StoredBatch",
    "__version__",
    "_log_ack",
    "_log_append",
    "_log_dead_letters",
    "_log_groups",
    "_log_purge",
    "_log_range",
    "_log_read",
    "_log_redrive",
    "_log_requeue",
    "_log_scan",
    "_log_stats",
    "_validate_topic",
]

__version__: str
"""The package version (taken from ``Cargo.toml`` at build time)."""

@final
class _Ready(Coroutine[Any, Any, _T_co]):
    """An awaitable that is already complete and holds its result.

    Returned by :meth:`EventBus.publish`, :meth:`EventBus.publish_batch` and
    :meth:`EventBus.start`: the work is done synchronously when the method is called,
    and awaiting the result costs no event-loop iteration. It behaves like a
    finished coroutine, so ``await``, ``asyncio.ensure_future``, ``create_task`` and
    ``gather`` all accept it.
    """

    def __await__(self) -> Generator[Any, None, _T_co]: ...
    def __iter__(self) -> Generator[Any, None, _T_co]: ...
    def __next__(self) -> None:
        """Raises ``StopIteration(value)`` at once."""

    def send(self, _value: object = None) -> None:
        """Raises ``StopIteration(value)`` at once."""

    def throw(self, typ: Any, val: Any = None, _tb: Any = None) -> None:
        """Raises the given exception."""

    def close(self) -> None: ...

@final
class _Pending(Coroutine[Any, Any, bool]):
    """The awaitable of a ``durability="sync"`` :meth:`EventBus.publish` (private).

    A coroutine in asyncio's sense (``create_task`` accepts it) that waits for the
    store writer's answer: True once the event is on disk and dispatched.
    """

    def __await__(self) -> Generator[Any, None, bool]: ...
    def __iter__(self) -> Generator[Any, None, bool]: ...
    def __next__(self) -> Any: ...
    def send(self, value: Any = None) -> Any: ...
    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any: ...
    def close(self) -> None: ...

@final
class _Job:
    """A consumer call in progress (private; driven by ``mpm_events._bus``).

    The bus steps each ``consume()`` coroutine by hand; when one suspends, the rest
    of the job runs in a Task that reports each result back through :meth:`resume`.
    """

    @property
    def consumer_name(self) -> str:
        """The name of the consumer the job belongs to."""

    def resume(self, result: Any, exc: BaseException | None = None) -> Awaitable[Any] | None:
        """Records the suspended call's result (or ``exc``) and continues the job.

        Returns:
            The next suspended call to await, or None once the job is done.
        """

    def abandon(self, reason: str) -> None:
        """Ends the job: every event without an outcome fails with ``reason``."""

    # The worker thread of a plain-function consumer records outcomes one by one:
    def events(self) -> list[Event]:
        """The job's events, in delivery order."""

    @property
    def batch(self) -> bool:
        """True when the job is one ``consume_batch`` call."""

    @property
    def finished(self) -> bool:
        """True once the job is closed (for example abandoned after a timeout)."""

    @property
    def cut(self) -> bool:
        """True once the bus asked that no further event of the job be started (it
        is stopping past its deadline, or the consumer unsubscribed)."""

    def cancel_rest(self) -> None:
        """Closes the job; the events not yet started count as not attempted."""

    def record_filtered(self) -> None:
        """The filter skipped the next event."""

    def record_value(self, value: Any) -> None:
        """The next event's ``consume()`` returned ``value`` (truthy = success)."""

    def record_error(self, exc: BaseException, stage: str) -> None:
        """``stage`` (``"consume()"``, ``"filter_func"``, ...) raised ``exc``."""

    def record_failure(self, message: str) -> None:
        """The next event failed with ``message``."""

    def record_batch(
        self, pre: list[str | None], result: Any, exc: BaseException | None = None
    ) -> None:
        """Closes a batch job: per event None (in the batch), ``"filtered"`` or a
        failure message; then the batch call's result or exception."""

    def finish(self) -> None:
        """Closes the job; events without an outcome fail."""

@final
class _JobSource:
    """Where a plain-function consumer's worker thread takes its jobs (private)."""

    def next_job(self) -> _Job | None:
        """The next job, waiting without the GIL; None once the consumer is gone."""

    def close(self) -> None:
        """Makes :meth:`next_job` return None (used at interpreter exit)."""

    def callables(
        self,
    ) -> tuple[
        Callable[..., Any],
        Callable[..., Any] | None,
        Callable[..., Any] | None,
        Callable[..., Any] | None,
        Callable[..., Any] | None,
        float,
    ]:
        """``(consume, consume_batch, filter_func, transform_func, error_handler, timeout)``."""

    def event_loop(self) -> asyncio.AbstractEventLoop | None:
        """The loop that started the bus, for awaitables a consumer returns."""

@final
class EventMetadata:
    """Processing metadata of an event, kept up to date by the bus.

    The bus updates it from its own threads while consumers run.
    ``consumers_processed`` and ``consumers_failed`` are live ``set`` objects and
    ``error_messages`` a live ``list``, as in the original's dataclass: the same
    object is returned on each access, code may mutate it, and the bus's own later
    changes are applied to it at the next access. (The Rust consumers read the
    bus's record, which does not include changes user code made to these objects.)

    Its datetimes may be given as ISO 8601 strings (naive ones are UTC).

    Attributes:
        retry_count: The highest retry number any consumer has reached for the event
            (0 until a first retry is handed out).
        max_retries: Informational; retries are governed by each consumer's
            ``ConsumerConfig.max_retries``, not by this field.
        published_at: When the bus accepted the event (UTC), else None.
        consumed_at: When the first consumer handled it successfully (UTC), else None.
        consumers_processed: Names of the consumers that handled the event.
        consumers_failed: Names of the consumers whose *latest* attempt failed; a
            consumer that succeeds on a retry is removed from it.
        error_messages: Every failure, oldest first, each prefixed with the consumer
            name (``"flaky: consume() returned False"``); never cleared by a success.
    """

    retry_count: int
    max_retries: int
    published_at: datetime | None
    consumed_at: datetime | None
    consumers_processed: set[str]
    consumers_failed: set[str]
    error_messages: list[str]

    def __new__(
        cls,
        retry_count: int = 0,
        max_retries: int = 3,
        published_at: datetime | str | None = None,
        consumed_at: datetime | str | None = None,
        consumers_processed: Iterable[str] | None = None,
        consumers_failed: Iterable[str] | None = None,
        error_messages: list[str] | None = None,
    ) -> Self:
        """Creates metadata; datetimes may be ISO 8601 strings (naive ones are UTC)."""

    def to_dict(self) -> dict[str, Any]:
        """The metadata as a plain dict; datetimes as ISO 8601 strings, sets as lists."""

    def __eq__(self, other: object, /) -> bool: ...

@disjoint_base
class Event:
    """An event: what producers publish and consumers receive.

    Same fields, order and defaults as the original's dataclass, positional or by
    keyword. The bus also accepts any object with these attributes (for example the
    original package's ``Event``); it is converted to this class, keeping its id.

    Args:
        id: Unique id; an empty string or None is replaced by a new uuid4 string.
        topic: Dotted topic such as ``hook.tool`` (validated when published).
        type: Event type such as ``ToolUse``.
        timestamp: A ``datetime`` or an ISO 8601 string (parsed); None means now
            (UTC).
        source: Who produced it (``hook_handler``, ``system``, ...).
        data: The payload; must be a ``dict`` (None means ``{}``).
        metadata: An :class:`EventMetadata` (or an object with its attributes); None
            means a fresh one.
        correlation_id: Links related events, or None.
        priority: An ``EventPriority`` (ours or a foreign enum, read by ``.name``
            then ``.value``), an int 1..4 or a member name. Default NORMAL.

    Raises:
        InvalidEventError: A field has the wrong type (a ``TypeError``).
        ValueError: An unparsable timestamp string or an out-of-range priority.

    Events compare equal when their ids are equal and hash by id.

    Once the bus accepts an event for a Python consumer, a payload made only of
    dicts (str keys), lists, str, int, float, bool and None is kept as compact JSON
    text and turned back into an equal dict (once, then cached) the first time
    ``data`` is read: consumers see the payload as it was at publish, not later
    changes the producer makes to its own dict. Other payloads (or ones deeper than
    32 levels or larger than 64 KiB) stay the caller's object. A generated ``id``
    and ``timestamp`` likewise become Python objects only when read.
    """

    id: str
    topic: str
    type: str
    timestamp: datetime
    source: str
    data: dict[str, Any]
    metadata: EventMetadata
    correlation_id: str | None
    priority: EventPriority

    def __init__(
        self,
        id: str | None = None,
        topic: str | None = None,
        type: str | None = None,
        timestamp: datetime | str | None = None,
        source: str | None = None,
        data: dict[str, Any] | None = None,
        metadata: EventMetadata | Any | None = None,
        correlation_id: str | None = None,
        priority: EventPriority | int | str | Any | None = None,
    ) -> None: ...
    def matches_topic(self, pattern: str) -> bool:
        """Whether this event's topic matches ``pattern`` (see the module docstring).

        Raises:
            InvalidTopicError: ``pattern`` is malformed.
        """

    def to_dict(self) -> dict[str, Any]:
        """The event as a plain dict: ISO 8601 timestamp, priority by name, metadata
        as :meth:`EventMetadata.to_dict`."""

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Event:
        """Rebuilds an event from :meth:`to_dict`'s output.

        ``id``, ``topic``, ``type``, ``timestamp`` and ``source`` are required;
        ``data``, ``metadata``, ``correlation_id`` and ``priority`` are optional.
        """

    def __eq__(self, other: object, /) -> bool: ...
    def __hash__(self) -> int: ...
    def __copy__(self) -> Event:
        """A shallow copy with its own copy of the metadata."""

@type_check_only
class _ErrorHandler(Protocol):
    def __call__(self, event: Event, exc: BaseException, /) -> Awaitable[Any] | Any: ...

@final
class Rule:
    """A content rule: an Amazon EventBridge event pattern, compiled once in Rust.

    The rule is a JSON object (a dict, or its JSON text) whose keys name fields of
    the event's document, ``Event.to_dict()`` (``id``, ``topic``, ``type``,
    ``timestamp`` (ISO 8601), ``source``, ``data``, ``metadata``,
    ``correlation_id``, ``priority`` (its name, e.g. ``"HIGH"``)), nested as the
    document nests. Every key must match; a leaf is a list of matchers, any of
    which may match: exact values (numbers by value), ``{"prefix": ...}``,
    ``{"suffix": ...}`` (both also with ``{"equals-ignore-case": ...}``),
    ``{"equals-ignore-case": ...}``, ``{"wildcard": "a*b"}``,
    ``{"anything-but": ...}`` (values, or a prefix/suffix/ignore-case/wildcard),
    ``{"numeric": [">", 0, "<=", 5]}``, ``{"exists": bool}``,
    ``{"cidr": "10.0.0.0/24"}``; ``"$or": [rule, rule, ...]`` at any level. An
    array in the event matches when any element does. The full table:
    ``docs/routing.md``.

    Args:
        rule: The pattern, a dict or a JSON string.

    Raises:
        InvalidRuleError: The rule does not compile; the message starts with the
            JSON path of the problem (``$.data.size[0].numeric[1]: expected a
            number, got "x"``).

    Example:
        >>> Rule({"topic": [{"prefix": "hook."}], "data": {"tool": ["Bash"]}}).matches(event)
    """

    def __new__(cls, rule: dict[str, Any] | str) -> Self: ...
    def matches(self, event: Event | dict[str, Any]) -> bool:
        """Whether ``event`` (an Event, as its ``to_dict()``, or a document dict) matches.

        Raises:
            InvalidEventError: A dict that is not JSON-like.
        """

@disjoint_base
class ConsumerConfig:
    """A consumer's configuration, read by :meth:`EventBus.subscribe`.

    The first eleven parameters are the original's, with its defaults; the others
    are new and keyword-only. Any object with the original's attributes is also
    accepted as a consumer's ``config`` (the new ones then take their defaults).

    Args:
        name: Unique among the bus's consumers; not empty.
        topics: Patterns to receive (see the module docstring); None means every
            topic unless ``topic_pattern`` is given.
        topic_pattern: A regular expression (``re.Pattern`` or str) matched from the
            start of the topic (like ``re.match``); an event is delivered when it
            matches ``topics`` *or* this pattern.
        priority: The consumer's place in the delivery order of each event
            (CRITICAL first). Default NORMAL.
        batch_size: Above 1, the consumer's ``consume_batch(events)`` is called with
            up to this many events; its int result is how many succeeded, counted
            from the front of the batch (the rest are failures and are retried).
        batch_timeout: Seconds a partial batch waits for more events; 0 delivers
            what is there at once.
        max_retries: How many times a failed event is retried for this consumer
            (0 = never) before it goes to the dead-letter queue.
        retry_backoff: Multiplier of the delay between retries (> 0).
        error_handler: ``(event, exc)``, called when ``consume``/``consume_batch``
            raises (or an async one times out) or ``filter_func``/``transform_func``
            raises; not for a False return. If it returns an awaitable, that runs
            in a Task of its own without holding up delivery. What it raises is
            logged.
        filter_func: ``(event) -> bool``; a false result skips the event for this
            consumer (counted as handled, in ``consumer_stats[...]["filtered"]``).
        transform_func: ``(event) -> event``; the consumer receives the result.
            Raising, or returning None, fails the event for this consumer only.
        retry_delay: Seconds before the first retry (new; default 0.1).
        max_retry_delay: Upper bound on any retry delay (new; default 30.0).
        timeout: Seconds one ``consume``/``consume_batch`` call may take (new;
            default 30.0). A call that runs longer fails (and is retried) and does
            not stall the other consumers.
        ordered: Keep the order across retries (new; default False): a failed
            attempt holds this consumer's queue until its retry, which is
            delivered before anything queued after it, so the consumer sees
            events in the order they were queued (per priority) even while a
            downstream server is away. Events after a failed one in the same
            batch were already attempted. A dashboard relay wants this, with a
            ``max_retries`` large enough to outlast an outage.
        claim_timeout: On a shared-log bus (``EventBus(backend=...)``) only, seconds
            (new; default 30.0, at least 0.03): an event handed to this instance
            and not acknowledged within it (the process died) is handed to another
            instance of the same name, or to this name again after a restart. A
            live instance renews its claims three times per timeout, so it is not
            robbed while it works.
        start: On a shared-log bus only, where a consumer name the log has not seen
            starts (new): ``"earliest"`` (default: every event still in the log,
            so events published before the consumer first ran reach it),
            ``"latest"`` (only events appended after it subscribed), or a
            ``datetime`` (from the first event whose timestamp is at or after it; a
            naive datetime is taken as UTC). A name the log knows keeps its
            position; ``start`` is ignored then.
        rule: A content rule (EventBridge event-pattern semantics, see
            :class:`Rule` and docs/routing.md): a dict, its JSON text or a
            ``Rule``. Matched in Rust against the event's ``to_dict()`` fields
            (without ``metadata``) before the event enters this consumer's
            queue; an event it does not match is counted ``filtered`` and never
            delivered (on a shared log it is acknowledged). Checked here and at
            subscribe: an invalid rule raises ``InvalidRuleError`` naming the
            JSON path.

    The delay before retry ``n`` (1-based) is
    ``min(retry_delay * retry_backoff ** (n - 1), max_retry_delay)`` times a random
    factor in ``[0.9, 1.1]`` (±10 % jitter), capped again at ``max_retry_delay``.
    A failure is a ``False``/falsy/None return, an exception or a timeout. A retry
    waiting for its delay does not hold back the consumer's later events (unless
    ``ordered``).
    """

    name: str
    topics: list[str] | None
    topic_pattern: Pattern[str] | str | None
    priority: ConsumerPriority
    batch_size: int
    batch_timeout: float
    max_retries: int
    retry_backoff: float
    error_handler: _ErrorHandler | None
    filter_func: Callable[[Event], bool] | None
    transform_func: Callable[[Event], Event] | None
    retry_delay: float
    max_retry_delay: float
    timeout: float
    ordered: bool
    claim_timeout: float
    start: str | datetime
    rule: Rule | dict[str, Any] | str | None

    def __init__(
        self,
        name: str,
        topics: list[str] | None = None,
        topic_pattern: Pattern[str] | str | None = None,
        priority: ConsumerPriority | int | str | Any | None = None,
        batch_size: int = 1,
        batch_timeout: float = 0.0,
        max_retries: int = 3,
        retry_backoff: float = 1.0,
        error_handler: _ErrorHandler | None = None,
        filter_func: Callable[[Event], bool] | None = None,
        transform_func: Callable[[Event], Event] | None = None,
        *,
        retry_delay: float = 0.1,
        max_retry_delay: float = 30.0,
        timeout: float = 30.0,
        ordered: bool = False,
        claim_timeout: float = 30.0,
        start: Literal["earliest", "latest"] | datetime | None = None,
        rule: Rule | dict[str, Any] | str | None = None,
    ) -> None: ...

@disjoint_base
class EventBus(IEventBus):
    """The event bus: a bounded priority queue routing events to consumers by topic.

    At runtime it is a virtual subclass of ``IEventBus`` (registered, not inherited).

    The engine (queueing, routing, batching, retries, timeouts, dead letters,
    metrics) runs in Rust. Consumers are reached per consumer "lane": each consumer
    has its own queue, so a slow or failing consumer does not delay the others, and
    each event reaches its consumers in ``ConsumerPriority`` order (CRITICAL first).
    Within a lane, higher ``EventPriority`` events leave first.

    Consumers whose ``consume`` (or, with ``batch_size > 1``, ``consume_batch``) is
    an ``async def`` run on the event loop that called :meth:`start`; plain ``def``
    methods run on a worker thread of their own, so a blocking consumer never stalls
    the loop (if a plain method returns an awaitable, it is run on the loop while the
    worker waits).

    Args:
        max_queue_size: How many accepted events may wait to be handed to a
            consumer; beyond it :meth:`publish` returns False and counts
            ``events_dropped``. An accepted event is never dropped.
        process_interval: Kept for compatibility; the bus is event-driven.
        batch_timeout: Kept for compatibility; batching is per consumer
            (``ConsumerConfig.batch_timeout``).
        enable_metrics: Kept for compatibility; metrics are always collected.
        enable_persistence: Store every accepted event in a local SQLite database
            before it is dispatched, with the consumers it was routed to; record each
            consumer's acknowledgement (handled or filtered out) and the dead
            letters; redeliver what a consumer (matched by name) has not
            acknowledged when a bus starts on the same file again (after a
            crash, also what was acknowledged in its last second). See
            ``docs/persistence.md``.
        dead_letter_capacity: How many dead letters are kept in memory (new,
            keyword-only); when full the oldest is evicted and counted in
            ``dead_letters_evicted``.
        persistence_path: The database file (keyword-only, like all below). Default
            ``$XDG_DATA_HOME/mpm-events/events.db``, else
            ``~/.local/share/mpm-events/events.db``. Parent directories are created.
        durability: ``"sync"`` (default): ``await publish(e)`` completes True only
            once the event is fsynced; concurrent publishes share one fsync (group
            commit). ``"async"``: ``publish`` returns at once; events are committed
            at the next group commit and fsynced within ``flush_interval``, so a
            power cut or OS crash can lose up to that window (a killed process loses
            only what was still queued for the writer, well under a millisecond).
        flush_interval: Seconds between forced syncs in ``"async"`` mode (0.05).
        retention_max_age: Delete stored events older (by their ``timestamp``) than
            this (a ``timedelta`` or seconds); None keeps them.
        retention_max_bytes: Then delete the oldest stored events until the store
            holds at most this many bytes of events; None for no limit.
        compress_threshold: Payloads larger than this many JSON bytes are stored
            LZ4-compressed (4096).
        retention_interval: Seconds between background retention runs (60.0);
            None to apply retention only through :meth:`apply_retention`.
        persistence_hard_limit_bytes: Cap on the database file size (SQLite
            ``max_page_count``): a publish that would grow it further returns False
            and logs an error, as on a full disk; nothing is deleted.
        backend: Where the bus's events live (keyword-only). None or ``"memory"``
            (default): in this process, as above. ``"sqlite:///path/to/events.db"``
            (or a plain path, ``str`` or ``os.PathLike``): a **shared durable log**
            that every process opening the same file shares; add
            ``?durability=normal`` to skip the fsync per commit (as
            ``durability="async"`` does). ``publish`` then completes True once the
            event is committed to the log, and nothing is dispatched at publish:
            every consumer, in this process or another, receives through its
            consumer name's group (names share, different names each get every
            event, positions survive restarts; see ``ConsumerConfig.claim_timeout``
            and ``start``). Dead letters, ``replay`` and ``join`` work on the log;
            ``retention_max_age``/``retention_max_bytes`` delete only entries every
            consumer name has handled. ``"redis://host:port/db?prefix=mpm"`` (or
            ``rediss://``, TLS) puts the same log on Redis Streams, shared across
            machines; there ``durability`` is the server's ``appendfsync`` setting and
            ``persistence_hard_limit_bytes`` does not apply. ``?spool=PATH`` (or
            ``spool=default``) spools a publish that cannot reach Redis to a local
            SQLite file (``publish`` returns True) and forwards it once, in order,
            when Redis is back; ``redis+cluster://host:port,host:port?prefix=mpm``
            is a Redis Cluster. Cannot be combined with
            ``enable_persistence``. See ``docs/backends.md``.

    Raises:
        ValueError: ``max_queue_size`` or ``dead_letter_capacity`` is below 1, an
            unknown ``durability``, a non-positive interval, an unknown ``backend``
            scheme or option, or ``backend`` with ``enable_persistence``.
        PersistenceError: The store cannot be opened: corrupt or not an
            mpm-events store, unreadable, newer schema. The message names the path
            and what to do; the file is never modified or silently replaced. The
            same for a ``backend`` log that cannot be opened (a directory, no
            permission, garbage, another database, a newer schema, a Redis server
            that does not answer).
    """

    max_queue_size: int
    """The queue bound; may be changed while running."""

    def __init__(
        self,
        max_queue_size: int = 10000,
        process_interval: float = 0.01,
        batch_timeout: float = 0.1,
        enable_metrics: bool = True,
        enable_persistence: bool = False,
        *,
        dead_letter_capacity: int = 10000,
        persistence_path: str | os.PathLike[str] | None = None,
        durability: Literal["sync", "async"] = "sync",
        flush_interval: float = 0.05,
        retention_max_age: timedelta | float | None = None,
        retention_max_bytes: int | None = None,
        compress_threshold: int = 4096,
        retention_interval: float | None = 60.0,
        persistence_hard_limit_bytes: int | None = None,
        backend: str | os.PathLike[str] | None = None,
    ) -> None: ...
    @property
    def process_interval(self) -> float: ...
    @property
    def batch_timeout(self) -> float: ...
    @property
    def enable_metrics(self) -> bool: ...
    @property
    def enable_persistence(self) -> bool: ...
    @property
    def persistence_path(self) -> str | None:
        """The store's file, or None without persistence."""
    @property
    def backend(self) -> str | None:
        """The shared log given as ``backend=``, or None for the in-process bus."""
    @property
    def is_running(self) -> bool:
        """True between :meth:`start` and :meth:`stop`."""

    def start(self) -> _Ready[Any]:
        """Starts the bus on the running event loop (idempotent); resolves to True.

        The loop watches a wake-up socket of the bus; async consumers run on it.
        A started bus is kept alive until :meth:`stop`. If the loop that started it
        has closed (a second ``asyncio.run()``), ``start()`` rebinds the running bus
        to the current loop and what was queued is delivered there; ``publish``,
        ``join`` and ``stop`` inside the new loop rebind it too.

        Raises:
            RuntimeError: Not called inside a running event loop.
        """

    def stop(self, timeout: float | None = None) -> Coroutine[Any, Any, None]:
        """Stops the bus (idempotent).

        Stops accepting events, flushes partial batches, fires waiting retries at
        once, waits until every accepted event is handled, then calls each
        consumer's ``shutdown()`` (each ``DeadLetterConsumer`` last). No consume call
        starts after that.

        If ``timeout`` seconds pass first, every event not yet handled is accounted
        for, and one warning with the counts is logged (no exception is raised):

        - events waiting, waiting for a retry, or not yet started in a job go to
          the dead letters with the reason "the bus stopped before this event
          could be delivered"; on a durable bus they stay unacknowledged in the
          store instead and are redelivered at the next start
          (``events_pending_in_store``);
        - a call still running gets up to ``timeout`` more seconds (never more than
          its consumer's ``timeout``) to finish; then it is abandoned (a coroutine
          is cancelled, a thread's late result ignored), counted as a failed
          attempt, and its event given up on as above.

        So ``stop(timeout)`` returns within about twice ``timeout``, and afterwards
        ``get_metrics()`` adds up: ``events_published == events_processed +
        events_dead_lettered + events_pending_in_store``.

        On a shared-log bus (``backend=``) the consumers' readers claim nothing more
        once ``stop`` begins; what the bus gives up on is not dead-lettered but stays
        in the log for its consumer name (``events_pending_in_store``): the readers'
        remaining claims are released, so the next start of the name, or another
        running instance of it (within 0.1 s), takes them without waiting for the
        claim to expire. Then the appender is closed.
        """

    def publish(self, event: Event | Any) -> Coroutine[Any, Any, bool]:
        """Publishes one event; returns an already-complete awaitable.

        With ``enable_persistence`` and ``durability="sync"`` the awaitable (a
        coroutine, so ``create_task`` accepts it) completes once the event is on
        disk and dispatched: True, or False with an error logged if it could not be
        stored (disk full), in which case it is not dispatched either. With
        ``"async"`` it is already complete; a later write failure is logged.

        The event is validated, routed and queued before this returns; ``await`` only
        reads the result. It never waits for a consumer.

        On a shared-log bus (``backend=``) the awaitable completes True once the
        event is committed to the log (fsynced with ``durability="sync"``; with
        ``"async"``/``?durability=normal`` committed, surviving a killed process but
        not a power cut), False with an error logged if it could not be written.
        Concurrent publishes share one transaction. Nothing is dispatched here:
        every consumer, in this process or another, receives it from the log.

        Returns:
            An awaitable of True if accepted; False if the bus is not running (a
            warning is logged once) or the queue is full (``events_dropped`` grows).

        Raises:
            InvalidEventError: Not an event, or a missing attribute or a ``data``
                that is not a dict (a ``TypeError``).
            InvalidTopicError: The topic is malformed or contains a wildcard.
            RuntimeError: The loop that started the bus has closed, no event loop
                is running here to take over, and a coroutine consumer is subscribed
                (``await bus.start()`` in the new loop); the event is not accepted.
                Without coroutine consumers (worker-thread consumers, the built-in
                Rust consumers) the event is accepted and delivered without a loop.
        """

    def publish_nowait(self, event: Event | Any) -> bool:
        """Publishes one event without awaiting; may be called from any thread.

        Same validation and result as :meth:`publish` (for synchronous hook handlers
        and worker threads). On a shared-log bus it blocks (the GIL released) until
        the event is committed.
        """

    def publish_batch(self, events: Iterable[Event | Any]) -> _Ready[int]:
        """Publishes several events; returns an already-complete awaitable.

        Every event is validated first: one bad event raises (naming its index) and
        none is published. Then each is offered in order; one refused because the
        queue is full is counted as dropped and the rest are still offered; if the
        bus is not running none is accepted.

        Returns:
            An awaitable of how many events were accepted.
        """

    def subscribe(self, consumer: Any) -> Coroutine[Any, Any, bool]:
        """Adds a consumer: validates its ``config``, awaits ``initialize()``,
        registers it.

        The consumer needs ``config``, ``initialize``, ``consume`` and ``shutdown``
        (and ``consume_batch`` when ``batch_size > 1``); it may be an
        ``IEventConsumer`` subclass or any object with those members. May be called
        before :meth:`start`.

        Returns:
            True if registered; False for a duplicate name, or an ``initialize()``
            that raised or returned a false value (logged).

        Raises:
            ConsumerConfigError: The config is invalid (a ``ValueError``).
            InvalidTopicError: A topic pattern is malformed.
        """

    def unsubscribe(self, consumer_name: str) -> Coroutine[Any, Any, bool]:
        """Removes a consumer by name, then awaits its ``shutdown()``.

        No consume call starts after this is called. Events still waiting for the
        consumer (or for a retry) go to the dead letters with the reason "the
        consumer unsubscribed before this event could be delivered"; on a durable
        bus they stay unacknowledged in the store and reach the consumer when a
        consumer of that name subscribes again. A call in progress is awaited up
        to the consumer's ``timeout`` (plus a second), then abandoned and counted
        as failed; then ``shutdown()`` is awaited.

        Returns:
            True if it was subscribed, else False.
        """

    def join(self, timeout: float | None = None) -> Coroutine[Any, Any, bool]:
        """Waits until every accepted event is fully handled by every consumer.

        "Fully handled" includes waiting retries and partial batches waiting for
        their ``batch_timeout``; an event handled means it succeeded, was filtered
        out or went to the dead-letter queue. Use it in tests instead of sleeping.

        On a shared-log bus: waits until this bus's publishes are committed, then
        until each consumer name subscribed here has handled every entry the log
        held at that moment, whoever published it (nothing pending for the name,
        in any of its instances: an instance that died holds its claims until its
        ``claim_timeout``).

        Returns:
            True.

        Raises:
            TimeoutError: ``timeout`` seconds passed first (the message says how
                many events are outstanding).
        """

    def get_consumers(self) -> list[Any]:
        """The subscribed consumers, in subscription order."""

    def get_metrics(self) -> dict[str, Any]:
        """Bus metrics.

        The original's keys: ``events_published`` (accepted), ``events_processed``
        (fully handled by every consumer it was routed to, none dead-lettering it;
        events no consumer subscribed to count here), ``events_failed`` (dead
        letters produced, per event and consumer), ``events_dropped`` (refused
        because the queue was full), ``consumers_active``, ``queue_size`` (events
        not yet handed to every consumer), ``processing_time_ms`` (median latency,
        weighted over consumers), ``last_event_time`` (datetime or None),
        ``dead_letter_queue_size``, and ``consumers`` (name -> that consumer's own
        ``get_metrics()``).

        New keys: ``events_dead_lettered`` (events some consumer dead-lettered),
        ``events_pending_in_store`` (events a durable bus gave up on at stop or
        unsubscribe, left unacknowledged in the store for redelivery),
        ``dead_letters_evicted``, ``events_in_flight`` (accepted, not yet fully
        handled), ``subscriptions``, and ``consumer_stats``: name -> dict with
        ``received`` (events routed to it), ``processed`` (successes), ``failed``
        (failed attempts, each retry counting), ``retried`` (retries scheduled),
        ``retrying`` (failed events waiting for their retry), ``dead_lettered``,
        ``filtered``, ``pending_in_store``, ``in_flight``, ``pending``,
        ``latency_p50_ms`` and ``latency_p99_ms`` (acceptance to success).

        They add up: ``events_published == events_processed + events_dead_lettered
        + events_pending_in_store + events_in_flight``, and per consumer
        ``received == processed + filtered + dead_lettered + pending_in_store +
        pending + in_flight + retrying``.

        On a shared-log bus, ``events_published`` and ``received`` count the events
        this process's consumers took from the log (an entry a consumer's ``topics``
        do not match is acknowledged for it without a call and not counted), and a
        ``shared_log`` key is added: ``backend``, ``events_appended`` (committed by
        this bus), ``append_failures``, ``appends_in_flight``, and ``consumers``:
        name -> ``pending`` (claimed, not yet acknowledged, all instances),
        ``ready`` (replayed dead letters waiting), ``lag`` (entries not yet handed
        to the name), ``dead_letters`` and ``skipped_by_topic``.
        """

    def get_dead_letters(self) -> list[dict[str, Any]]:
        """The dead letters, oldest first.

        Each is a dict: ``event`` (the :class:`Event`), ``consumer`` (its name),
        ``errors`` (the message of each failed attempt, oldest first; not prefixed),
        ``attempts`` (int) and ``failed_at`` (UTC datetime).

        On a shared-log bus: the dead letters kept in the log, of every consumer
        name and every process (``errors`` holds the last error only, but every
        violation for consumer ``"<schema>"``), with their ``id`` and ``entry_id``
        in the log (``"0-0"`` for ``"<schema>"``: the event was never appended).
        """

    def register_schema(
        self,
        topic_pattern: str,
        schema: dict[str, Any] | str | type,
        *,
        on_invalid: Literal["raise", "dead_letter"] = "raise",
    ) -> None:
        """Checks the payload of every event published on topics matching
        ``topic_pattern`` against a JSON Schema (draft 2020-12), in Rust.

        ``schema`` is a JSON Schema dict (or its JSON text), or a pydantic model
        class (its ``model_json_schema()``; pydantic is not imported otherwise).
        ``$ref`` may point inside the schema only (nothing is fetched). A later
        schema for the same pattern text replaces the earlier one; an event on a
        topic several patterns match must pass all of them. Ready-made schemas for
        the built-in producers' payloads are in ``mpm_events.schemas``.

        With ``on_invalid="raise"``, publishing an invalid event raises
        ``SchemaValidationError`` (naming the JSON path and the keyword that
        failed) and accepts nothing; ``publish_batch`` checks every event first
        and raises naming all the failing indexes (``failed``), accepting none.
        With ``"dead_letter"``, the event is accepted (``publish`` returns True)
        straight into the dead letters (consumer ``"<schema>"``, the violations as
        its errors) and never delivered; ``publish_batch`` publishes the valid
        events and dead-letters the others. On a durable bus the dead letter is
        also stored (``get_stored_dead_letters()``, kept across restarts; the
        event itself is not stored); on a shared log it is written to the log's
        dead letters (every process's ``get_dead_letters()``; the event is never
        appended). ``replay_dead_letters()`` publishes such an event again if it
        passes the schemas registered then, and leaves it (with a warning) if it
        still fails. ``get_metrics()["schema_invalid"]`` counts invalid events per
        topic.

        Raises:
            InvalidTopicError: The pattern is malformed.
            ConsumerConfigError: The schema is not a valid JSON Schema, or
                ``on_invalid`` is unknown.
            TypeError: ``schema`` is neither a dict nor a model class.
        """

    def replay(
        self,
        since: datetime | None = None,
        until: datetime | None = None,
        topics: list[str] | str | None = None,
        to: IEventConsumer | str | None = None,
        *,
        rule: Rule | dict[str, Any] | str | None = None,
    ) -> Coroutine[Any, Any, int]:
        """Re-delivers stored events to one subscribed consumer (persistence only).

        Selects the stored events with ``since <= timestamp < until`` (either bound
        None for open; naive datetimes are UTC) whose topic matches one of the
        patterns ``topics`` (all if None) and queues them, in timestamp order, for
        ``to`` only, with their original ids; other consumers and live traffic are
        not affected. Resolves once all are queued (``join()`` waits for handling).
        With ``rule``, only the events the content rule matches (see
        :class:`Rule`) are queued.
        On a shared-log bus it reads the log's range (every process's events, in
        log order); what it queues is not acknowledged in the log.

        Returns:
            How many events were queued.

        Raises:
            RuntimeError: Persistence (or a shared log) is off, or the bus is not
                running.
            ValueError: ``to`` is not subscribed.
            InvalidTopicError: A pattern is malformed.
            InvalidRuleError: ``rule`` is not a valid rule.
        """

    def persistence_stats(self) -> dict[str, Any]:
        """Counters of the event store: ``path``, ``durability``, ``stored_events``,
        ``stored_bytes``, ``pending_deliveries`` (unacknowledged (event, consumer)
        pairs), ``stored_dead_letters``, ``write_failures`` (publishes refused by
        the store), ``background_write_errors``, ``writes_in_flight``,
        ``acks_written``, ``redelivered`` (at start/subscribe) and ``replayed``.

        Raises:
            RuntimeError: Persistence is off.
        """

    def apply_retention(self) -> dict[str, int]:
        """Applies retention now (it also runs every ``retention_interval``):
        ``deleted_by_age``, ``deleted_by_size``, ``bytes_before``, ``bytes_after``."""

    def get_stored_dead_letters(self) -> list[dict[str, Any]]:
        """The dead letters kept in the store (they survive restarts), oldest first:
        ``id``, ``event``, ``consumer``, ``errors``, ``attempts``, ``failed_at``."""

    def flush_persistence(self) -> None:
        """Writes collected acknowledgements and waits until everything is on
        disk (``stop()`` does this too). Blocks; the GIL is released."""

    def replay_dead_letters(
        self, consumer: str | None = None, event_ids: list[str] | None = None
    ) -> int:
        """Re-delivers dead letters to the consumers that failed them.

        Selects the dead letters of ``consumer`` (all if None) whose event id is in
        ``event_ids`` (all if None) and whose consumer is still subscribed, removes
        them from the dead-letter queue and queues each for that consumer only, with
        a fresh set of retries.

        On a shared-log bus the dead letters go back into the log for their consumer
        name: whichever instance of it runs, in any process, gets them (this bus
        need not run, nor be the one that dead-lettered them).

        A dead letter of consumer ``"<schema>"`` (its payload failed a
        ``"dead_letter"`` schema) is checked again against the schemas registered
        now: if it passes, the event is published again (to every consumer; on a
        shared log appended) and counted; if it still fails, it stays in the dead
        letters, is not counted, and a warning names it.

        Returns:
            How many were re-queued.

        Raises:
            RuntimeError: The bus is not running (in-process bus).
        """

    def serve_monitor(self, host: str = "127.0.0.1", port: int = 0) -> Awaitable[str]:
        """Starts the monitor (a web page, SSE and WebSocket streams and a JSON API,
        docs/monitor.md) on the engine's runtime and returns its URL.

        The URL holds the per-run token (``http://127.0.0.1:PORT/?token=...``) that
        state-changing requests (redrive, purge, replay) need; read-only views need
        none. Loopback by default; the server stops with the bus (``stop()``) or
        with ``stop_monitor()``. While no client is connected it costs one atomic
        load per publish.

        Args:
            host: The address to listen on.
            port: The port (0: any free port).

        Returns:
            The page's URL, token included.

        Raises:
            RuntimeError: The bus is not running, or the monitor already serves.
            OSError: The address cannot be listened on.
        """

    def stop_monitor(self) -> bool:
        """Stops the monitor server (open streams end); True if one was running."""

    @property
    def monitor_url(self) -> str | None:
        """The monitor's URL (with its token) while it serves, else None."""

    # ----- private, used by mpm_events._monitor -----
    def _route(self, topic: str) -> list[str]: ...
    def _purge_dead_letters(
        self, consumer: str | None = None, event_ids: list[str] | None = None
    ) -> int: ...
    def _log_groups(self) -> list[dict[str, Any]] | None: ...
    def _monitor_drop_clients(self, reason: str) -> int: ...
    def _monitor_push(self, json: str) -> bool: ...
    def _monitor_watching(self) -> bool: ...

    # ----- private, used by mpm_events._bus -----
    def _prepare(self, consumer: Any) -> str | None: ...
    def _register(self, consumer: Any) -> bool: ...
    def _unregister(self, name: str) -> tuple[Any, _Leaving] | None: ...
    def _topics(self, name: str) -> list[str] | None: ...
    def _drain_wakeups(self) -> None: ...
    def _run_pending(self) -> bool: ...
    def _is_idle(self) -> bool: ...
    def _add_idle_waiter(self, fut: Any) -> None: ...
    def _begin_stop(self) -> None: ...
    def _abort_pending(self) -> None: ...
    def _detach(self) -> None: ...
    def _outstanding(self) -> int: ...
    def _loop_closing(self) -> None: ...
    def _set_pump(self, pump: Callable[[], bool] | None) -> None: ...
    def _bound_loop(self) -> Any | None: ...
    def _loop_gone(self) -> bool: ...
    def _wake_fd(self) -> int: ...
    def _set_loop(self, event_loop: Any) -> None: ...
    def _ensure_loop(self) -> None: ...
    def _ended_counts(self) -> tuple[int, int]: ...
    def _call_grace(self) -> float: ...
    def _abandon_in_flight(self, reason: str) -> int: ...
    def _close_log(self) -> None: ...
    def _at_exit(self) -> tuple[int, int]: ...
    def _dead_letter_files(self) -> list[str]: ...
    def _persist_close_gate(self, fut: Any) -> None: ...
    def _persist_unacked(self, names: list[str], upto: int) -> _StoredBatch: ...
    def _persist_watermark(self) -> int: ...
    def _persist_redelivery_done(self) -> None: ...
    def _persist_replay_read(
        self,
        since_us: int | None,
        until_us: int | None,
        topics: list[str] | None,
        to: str,
        rule: Rule | dict[str, Any] | str | None = None,
    ) -> _StoredBatch: ...
    def _persist_push(self, batch: _StoredBatch) -> int: ...
    def _log_begin_stop(self) -> None: ...
    def _log_last(self) -> tuple[int, int] | None: ...
    def _log_caught_up(self, upto: tuple[int, int] | None) -> bool: ...
    def _log_stop_reader(self, name: str) -> int: ...
    def _log_close(self) -> int: ...

@final
class _Leaving:
    """A consumer being unsubscribed (private; see ``mpm_events._bus.unsubscribe``)."""

    @property
    def timeout(self) -> float:
        """The consumer's per-call timeout, seconds."""
    def busy(self) -> bool:
        """True while a job of the consumer is still in flight."""
    def abandon(self, reason: str) -> None:
        """Gives up on the job in flight (its call counts as failed)."""

def _validate_topic(topic: str) -> None:
    """Raises InvalidTopicError unless ``topic`` is a valid published topic (private)."""

# --- the shared log without a bus (private helpers: the hook command, tests, W11) ---

def _log_append(
    url: str,
    events: Iterable[Event | dict[str, Any]],
    *,
    durability: Literal["sync", "normal"] | None = None,
    default_spool: bool = False,
) -> list[str]:
    """Appends events to the shared log at ``url`` without a bus (private).

    What ``mpm-events hook`` uses: no ``EventBus``, no asyncio, no Tokio runtime. The
    events are encoded as the bus's shared-log readers decode them
    (``src/backend/codec.rs``) and appended in one transaction, committed (and with
    ``durability="sync"``, the default unless the URL says ``?durability=normal``,
    fsynced) when this returns. The GIL is released while the log is opened and
    written. The handle stays open for later calls of this process.

    On Redis (``redis://host:port/db?prefix=mpm``, ``rediss://``) the events go in
    one idempotent append script (a retry does not duplicate them); with a spool
    (``?spool=PATH`` or ``?spool=default``, or ``default_spool``) an append that
    cannot reach Redis goes to the local SQLite spool instead and is forwarded, in
    order, by the next append (of any process) that reaches Redis, or by a running
    bus. Without ``timeout=`` in the URL, the connect and response timeout is 0.75 s.

    Args:
        url: ``sqlite:///path/to/events.db`` (the file and its directories are
            created if needed), or a ``redis://`` / ``rediss://`` /
            ``redis+cluster://`` URL.
        events: ``Event`` objects (or objects with their attributes), or dicts of
            ``Event``'s constructor arguments (``topic``, ``type``, ``source``,
            ``data``, ``correlation_id``, ...).
        durability: ``"sync"`` or ``"normal"``; None: the URL's (default sync).
            SQLite only (Redis: the server's persistence settings decide).
        default_spool: Redis only: spool to ``spool=default``
            (``~/.claude-mpm/mpm-events/spool/<host>_<port>_<db>_<prefix>.db``) unless
            the URL says ``spool=`` (``spool=off``: no spool). ``mpm-events hook``
            passes True.

    Returns:
        The entry ids (``"<seq>-0"`` on SQLite, ``"<ms>-<n>"`` on Redis), in the
        order of ``events``; ``"spool:<seq>-0"`` for events that went to the spool.

    Raises:
        ValueError: A URL that is neither a SQLite log's nor a Redis one, an unknown
            durability or URL option.
        InvalidTopicError: An event's topic is not a valid published topic.
        InvalidEventError: An item is not an event, or its data is not JSON.
        PersistenceError: The log cannot be opened or written (corrupt, newer schema,
            permission, a path under a regular file, disk full); the message names
            the path (or the Redis URL: unreachable without a spool). Nothing of the
            call is in the log then.
    """

def _log_range(
    url: str,
    *,
    since_us: int | None = None,
    until_us: int | None = None,
    topics: list[str] | None = None,
    after: str | None = None,
    limit: int = 10000,
    exclude: list[str] | None = None,
    last: int | None = None,
) -> list[dict[str, Any]]:
    """Entries of the shared log at ``url``, in log order, read only (private).

    Entries whose event timestamp is in ``since_us <= t < until_us`` (unix
    microseconds; either bound open) and whose topic matches one of ``topics``
    (subscription patterns; None: all) and none of ``exclude``, at most ``limit``,
    after the entry id ``after`` (paging). With ``last``, the last ``last`` such
    entries instead (one pass over the window; ``limit`` is ignored). Each is a dict:
    ``entry_id``, ``id``, ``topic``, ``type``, ``source``, ``timestamp_us``,
    ``published_us``, ``priority`` (int), ``correlation_id``, ``data``,
    ``publisher``, ``publisher_seq``.

    Args:
        url: ``sqlite:///path/to/events.db`` or ``redis://host:port/0``.

    Raises:
        ValueError: A bad URL, pattern or entry id.
        PersistenceError: The log cannot be opened or read (the message names the path).
    """

def _log_scan(
    url: str,
    *,
    since_us: int | None = None,
    until_us: int | None = None,
    topics: list[str] | None = None,
    exclude: list[str] | None = None,
    after: str | None = None,
    limit: int = 1000,
    budget: int = 50000,
) -> tuple[list[dict[str, Any]], str | None]:
    """Entries after ``after`` as :func:`_log_range` filters them (at most ``limit``),
    and the entry id of the last entry looked at, matching or not (private; ``tail``).

    Passing that id as the next call's ``after`` moves a follower past entries that
    did not match instead of reading them again. One call looks at no more than about
    ``budget`` entries; the id is ``after`` itself when there was nothing to look at.

    Raises:
        ValueError: A bad URL, pattern or entry id.
        PersistenceError: The log cannot be opened or read.
    """

def _log_read(
    url: str,
    group: str,
    instance: str,
    max: int = 100,
    block_ms: int = 0,
    *,
    start: Literal["earliest", "latest"] = "earliest",
) -> list[dict[str, Any]]:
    """Claims up to ``max`` entries for ``instance`` of consumer group ``group``
    (private; a benchmark-level API, W11).

    The group is created at the first call of this process if the log does not know
    it (from ``start``). With ``block_ms``, waits up to that long for an append from
    any process. The dicts are those of :func:`_log_range` plus ``deliveries``.
    There is no heartbeat: claims expire as the log's ``claim_expired`` decides; the
    bus's readers (``GroupReader``) renew theirs.

    Raises:
        ValueError: A bad URL, group or instance name, or ``start``.
        PersistenceError: The log cannot be opened or written.
    """

def _log_ack(url: str, group: str, ids: list[str]) -> int:
    """Acknowledges the entries ``ids`` (``entry_id`` values) for ``group``; returns
    how many were pending (private; W11).

    Raises:
        ValueError: A bad URL or entry id.
        PersistenceError: The log cannot be opened or written.
    """

def _log_groups(url: str) -> list[dict[str, Any]]:
    """Every consumer group (consumer name) of the shared log at ``url`` (private; the
    ``stats`` command).

    Each is a dict: ``name``, ``position`` (the last entry id handed to it, or None),
    ``pending`` (claimed, not yet acknowledged), ``ready`` (waiting to be handed out
    again: redriven or replayed), ``lag`` (entries after its position),
    ``dead_letters``.

    Raises:
        ValueError: A bad URL.
        PersistenceError: The log cannot be opened or read.
    """

def _log_stats(url: str, *, topics: bool = True) -> dict[str, Any]:
    """Counts of the shared log at ``url`` (private; the ``stats`` command).

    A dict: ``entries``, ``bytes``, ``first`` and ``last`` (entry ids or None),
    ``groups``, ``dead_letters``, ``dropped_unhandled``, and with ``topics`` also
    ``topics``: entries per topic (one pass over the log).

    Raises:
        ValueError: A bad URL.
        PersistenceError: The log cannot be opened or read.
    """

def _log_dead_letters(
    url: str, group: str | None = None, limit: int = 1000
) -> list[dict[str, Any]]:
    """The dead letters kept in the shared log at ``url``, oldest first, of consumer
    name ``group`` or of all (private; the ``dlq`` command).

    Each is a dict: ``dl_id`` (for :func:`_log_redrive` and :func:`_log_purge`),
    ``group``, ``entry_id``, ``reason`` (the last error), ``attempts``,
    ``failed_us`` and ``event`` (a dict as :func:`_log_range` gives).

    Raises:
        ValueError: A bad URL.
        PersistenceError: The log cannot be opened or read.
    """

def _log_redrive(url: str, group: str, dl_ids: list[int] | None = None) -> int:
    """Hands dead letters back to consumer name ``group`` (``dl_ids`` None: all of
    its): each becomes an entry waiting to be handed out to that name again, its dead
    letter removed. Returns how many (private; ``dlq redrive``).

    Raises:
        ValueError: A bad URL.
        PersistenceError: The log cannot be opened or written, or does not know
            ``group``.
    """

def _log_purge(url: str, dl_ids: list[int]) -> int:
    """Deletes dead letters without handing them back; returns how many (private;
    ``dlq purge``).

    Raises:
        ValueError: A bad URL.
        PersistenceError: The log cannot be opened or written.
    """

def _log_requeue(url: str, group: str, ids: list[str]) -> int:
    """Hands the entries ``ids`` (``entry_id`` values) to consumer name ``group``
    again, and to no other name: each waits to be handed out once more (private; the
    ``replay`` command). Entries after the group's position (it gets them anyway) and
    entries no longer in the log are skipped. Returns how many were handed back.

    Raises:
        ValueError: A bad URL or entry id.
        PersistenceError: The log cannot be opened or written, or does not know
            ``group``.
    """

@final
class _StoredBatch:
    """Stored events waiting to be queued (private)."""

    @property
    def remaining(self) -> int: ...

@disjoint_base
class _NativeConsumer:
    """Base class of the built-in consumers written in Rust.

    The bus runs them in Rust, without the GIL; these methods make them usable as
    ordinary ``IEventConsumer`` objects too (called directly, they run synchronously).
    """

    @property
    def config(self) -> ConsumerConfig:
        """The consumer's configuration."""

    @property
    def is_healthy(self) -> bool:
        """Whether the consumer can do its work."""

    def initialize(self) -> _Ready[bool]:
        """Runs the consumer's own setup (a ``DeadLetterConsumer`` creates its
        directory); resolves to True, or to False with an error logged if that fails."""

    def consume(self, event: Event | Any) -> _Ready[bool]:
        """Handles one event directly (the bus does not call this)."""

    def consume_batch(self, events: Iterable[Event | Any]) -> _Ready[int]:
        """Handles several events directly; resolves to how many succeeded."""

    def shutdown(self) -> Awaitable[None]:
        """Flushes and releases resources (on a worker thread)."""

    def get_metrics(self) -> dict[str, Any]:
        """The consumer's metrics."""

@final
class MetricsConsumer(_NativeConsumer):
    """Event statistics collected in Rust: counts by topic, type, source and
    ``topic:type``, rates over a sliding window, latency, top-N, errors per consumer.

    Priority DEFERRED; subscribes to ``**`` unless ``topics`` is given.

    ``get_metrics()["events_per_second"]`` is computed when read: the events
    the consumer received in the last ``window_size`` seconds divided by
    ``window_size`` (while the consumer is younger than that, divided by its age,
    but by at least 0.1 s). Events are counted in 0.1-second buckets; the bucket
    the window starts in counts by the share of it inside the window, so a
    steady rate reads as itself and the rate falls to 0 within ``window_size``
    seconds after the last event. ``peak_rate`` is the highest value
    ``events_per_second`` has had at any instant since the consumer was created
    (it can only rise when events arrive, so it is evaluated as each batch is
    counted): never below a rate read, and 0 only before the first event.

    Args:
        window_size: Seconds of the sliding window for rates (>= 1).
        top_n: How many entries the top-N lists hold.
        report_interval: Seconds between periodic reports to the log.
        name: The consumer's name (keyword-only).
        topics: Patterns to receive (keyword-only); None means ``["**"]``.
    """

    @property
    def window_size(self) -> int: ...
    @property
    def top_n(self) -> int: ...
    @property
    def report_interval(self) -> float: ...
    def __new__(
        cls,
        window_size: int = 300,
        top_n: int = 10,
        report_interval: float = 60.0,
        *,
        name: str = "MetricsConsumer",
        topics: list[str] | None = None,
    ) -> Self: ...

# --- Built-in consumers (branch `consumers`) --------------------------------
# NOTE: MetricsConsumer above also logs the original's "=== Event Metrics
# Report ===" (plus latency percentiles) to logger ``mpm_events.metrics`` every
# ``report_interval`` seconds (checked as events arrive; <= 0 disables) and at
# shutdown. get_metrics() adds latency_p50/p95/p99_ms, topic_counts,
# type_counts and source_counts to the original's keys.

@final
class LoggingConsumer(_NativeConsumer):
    """Logs events through Python ``logging``; formatting happens in Rust.

    Each record is the original's ``_format_event``: ``[topic] type (id=<first
    8>, source=...)``, then (if ``include_data`` and the payload is non-empty)
    a newline and the payload as ``json.dumps(indent=2)`` (or ``str()`` when
    ``format_json`` is False) cut to ``max_data_length`` characters plus
    ``...``, then `` [retries=N, failed={'C'}]`` when the event was retried or
    failed. Level: ERROR for events with failed consumers or ``error.`` topics,
    WARNING for retried events or ``warning.`` topics, DEBUG for ``debug.``,
    else ``log_level``.

    Records are handed over in batches to one dedicated thread that attaches
    to Python once per batch (never per event, never from a Tokio task); a
    batch counts as consumed once logged, so after ``await bus.join()`` the
    records exist. Priority LOW; topics ``**`` unless given.

    Args:
        log_level: DEBUG, INFO, WARNING, ERROR or CRITICAL (ValueError otherwise).
        topics: Patterns to log; None means ``["**"]``.
        format_json: Payload as indented JSON rather than ``str()``.
        include_data: Append the payload.
        max_data_length: Longest payload text before it is cut.
        logger_name: The logger (keyword-only); default ``mpm_events.events``.
        name: The consumer's name (keyword-only).
    """

    log_level: str
    format_json: bool
    include_data: bool
    max_data_length: int
    logger_name: str
    def __new__(
        cls,
        log_level: str = "INFO",
        topics: list[str] | None = None,
        format_json: bool = True,
        include_data: bool = True,
        max_data_length: int = 1000,
        *,
        logger_name: str = "mpm_events.events",
        name: str = "LoggingConsumer",
    ) -> Self: ...

@final
class DeadLetterConsumer(_NativeConsumer):
    """Persists failed events as JSON lines for analysis and replay.

    Receives every event that exhausted its retries in ANY consumer of the bus
    (the built-in Rust consumers too: a Socket.IO event the server never
    acknowledged), plus events on its own topics (default
    ``error.**``, ``failed.**``) that already have failed consumers, retries
    exhausted or error messages (the original's ``_should_store``). Priority
    CRITICAL.

    Files: ``<output_dir>/dead-letter-YYYYmmdd-HHMMSS.jsonl`` (UTC; a second
    file started within the same second gets ``-1``, ``-2``, ...). A new file
    is started at ``initialize()`` and when the next line would exceed
    ``max_file_size``. Files not modified for ``retention_days`` are deleted at
    ``initialize()`` and hourly while writing.

    Line format (one JSON object, ``\\n``-terminated, written with one write)::

        {"id", "topic", "type", "timestamp": ISO 8601, "source", "data",
         "correlation_id", "priority": "NORMAL",
         "metadata": {"retry_count", "consumers_failed": [...], "error_messages": [...]},
         "dead_letter": {"consumer": name or null, "errors": [one per attempt],
                         "attempts": n, "stored_at": ISO 8601}}

    A line torn by a crash is skipped (and counted in ``lines_skipped``) on
    read. See ``docs/dead-letters.md``.

    Args:
        output_dir: Directory; default ``~/.claude-mpm/dead-letter``.
        max_file_size: Bytes per file before rotating (default 10 MiB).
        retention_days: Days a file is kept.
        topics: Own topics; None means ``["error.**", "failed.**"]``.
        name: The consumer's name (keyword-only).
    """

    max_file_size: int
    retention_days: float
    def __new__(
        cls,
        output_dir: str | os.PathLike[str] | None = None,
        max_file_size: int = 10 * 1024 * 1024,
        retention_days: float = 7.0,
        topics: list[str] | None = None,
        *,
        name: str = "DeadLetterConsumer",
    ) -> Self: ...
    @property
    def output_dir(self) -> pathlib.Path:
        """The directory of the dead-letter files."""

    def files(self) -> list[pathlib.Path]:
        """The dead-letter files, oldest first."""

    def cleanup(self) -> int:
        """Deletes files past retention now; returns how many."""

    def replay_events(
        self,
        start_time: datetime | None = None,
        end_time: datetime | None = None,
        topic_filter: str | None = None,
    ) -> Awaitable[list[Event]]:
        """Stored events (oldest first) as ``Event`` objects with their id,
        timestamp, payload and metadata, ready for ``bus.publish``.

        ``start_time``/``end_time`` bound the event timestamp (inclusive; naive
        datetimes are UTC). ``topic_filter`` is a prefix as in the original
        (``"hook."``) or, if it contains ``*``, a topic pattern (``"hook.*"``).
        """

@final
class SocketIOConsumer(_NativeConsumer):
    """Forwards events to a Socket.IO v5 server (the Claude MPM dashboard).

    A Rust Socket.IO client over WebSocket (``http``/``ws`` URLs, and
    ``https``/``wss`` through rustls: no OpenSSL).
    Point it at a dashboard with ``url`` (``claude-mpm monitor`` serves on
    ``http://localhost:8765``, the default URL's port).

    By default (``event_names="dashboard"``) it speaks the dashboard's inbound
    protocol: every event is emitted as ``claude_event``, the name claude-mpm's
    server handles from clients, with the normalized payload claude-mpm's hook
    handler sends: ``{event: "mpm_event", source, type, subtype, timestamp (ISO
    8601 UTC), data, correlation_id?, session_id?, cwd?, id, topic}``.
    ``session_id``, ``cwd`` (also read as ``working_directory``) and
    ``correlation_id`` are set when known: the event's ``correlation_id``, else
    the first found in ``data``, at its top level, then one level down (for
    example in ``publish_tool_use``'s ``params`` or a system event's
    ``details``). ``type``/``subtype`` give what claude-mpm's hook handler gives
    for the same hook, never "unknown": on ``hook.*`` topics the Claude Code
    hook names of ``publish_raw_hook_event`` map to ``user_prompt``,
    ``pre_tool``, ``post_tool``, ``notification``, ``stop``,
    ``subagent_start``, ``subagent_stop``, ``session_start``, ``session_end``,
    ``assistant_response``, ``pre_compact`` (type ``hook``);
    ``publish_tool_use`` gives ``post_tool`` with a result, else ``pre_tool``;
    ``publish_response`` ``assistant_response``; ``publish_subagent_event(name,
    "Start", ...)`` ``subagent_start`` (``subagent_<x>`` for any ``x``);
    ``publish_error`` type ``error``, subtype ``hook_error``; other hook types
    their name in snake case. ``SystemEventProducer``: ``startup``,
    ``shutdown``, ``health``, ``config_change``, ``warning`` (type ``system``),
    ``metrics`` (type ``performance``), ``system_error`` (type ``error``). Any
    other topic ``a.b``: type ``a``, subtype the event type in snake case (else
    ``b``, else ``generic``). The full table: ``src/sinks/socketio/dashboard.rs``.

    ``event_names="legacy"`` sends what the original consumer sent, for servers
    that want it: names by topic prefix (``hook.`` -> ``hook_event``, ``cli.``
    -> ``cli_event``, ``system.`` -> ``system_event``, ``agent.`` ->
    ``agent_event``, ``build.`` -> ``build_event``, else ``claude_event``) and
    the payload ``{id, type, topic, timestamp (ISO 8601), source, data,
    correlation_id}``. claude-mpm's dashboard server handles none of those five
    names. ``event_name`` overrides the name in either mode.

    Delivery is honest: one ``consume`` call is one delivery attempt of its
    batch, and an event counts delivered only when the server acknowledged it
    (every emit requests a Socket.IO ack; claude-mpm's server acks
    ``claude_event``). An event not acknowledged within ``ack_timeout`` seconds,
    or whose connection attempt failed (server down, refused auth), fails that
    attempt: the bus retries it with this consumer's backoff (``retry_delay``
    doubling, ``max_retries`` times) and then dead-letters it
    (``get_dead_letters()`` with the reason, every DeadLetterConsumer), counted
    failed in the metrics, never delivered. Events are sent in order over one
    connection; while the server is away the consumer reconnects on demand (an
    attempt per retry, at most one per ``reconnect_delay``), otherwise with
    backoff ``reconnect_delay`` doubling to ``max_reconnect_delay``. A server
    that comes back within the retry window gets each event once (a duplicate
    only if a connection drops after the server handled an event but before
    its ack arrived; counted in ``maybe_duplicated``). With ``require_ack=False`` an
    event counts delivered once written, for servers that never ack. Other
    consumers and the publisher never wait for this one. ``shutdown()``
    (``bus.stop()``) closes the connection once every attempt is resolved,
    waiting at most ``flush_timeout``; with the server unreachable the bus's
    ``stop()`` does not wait out retries: what is left is dead-lettered with
    the reason.

    Config: name ``SocketIOConsumer``, topics ``**``, priority HIGH, the given
    batch size/timeout, ``max_retries`` (3) retries, first after
    ``retry_delay`` (1 s), backoff 2.0.

    Args:
        socketio_server: A URL string (an original server object is ignored).
        port_range: The default URL uses its first port on 127.0.0.1.
        reconnect_delay: First reconnect delay, seconds.
        max_reconnect_delay: Upper bound of the delay.
        batch_size: Events per batch.
        batch_timeout: Seconds to wait to fill a batch.
        url: Server URL (keyword-only), e.g. ``http://127.0.0.1:8765``.
        namespace: Socket.IO namespace.
        auth: Auth payload of the namespace connect.
        headers: Extra WebSocket handshake headers.
        event_name: One name for every event, or ``{topic prefix: name}``
            (longest prefix wins; others get ``event_names``'s name).
        event_names: ``"dashboard"`` (default): ``claude_event`` and the
            dashboard's normalized payload; ``"legacy"``: the original's names
            by topic prefix and its payload.
        buffer_limit: Most items waiting in the emitter (sent, not yet
            acknowledged, or waiting for the connection); more fail their
            attempt.
        emit_per_batch: A name (or True for ``claude_event_batch``): one emit
            per batch carrying the list of payloads (claude-mpm's dashboard
            server handles only one event per ``claude_event``, so leave it
            unset for a dashboard).
        flush_timeout: Most seconds ``shutdown()`` waits for the attempts still
            open to resolve (default 5).
        ack_timeout: Seconds an emitted event may wait for the server's ack
            before its attempt fails (default 10; must be > 0).
        require_ack: False counts an event delivered once written (no ack
            requested).
        max_retries: Retries of a failed attempt before the dead letter.
        retry_delay: Seconds before the first retry (then doubling).
        name: The consumer's name.
        ca_file: PEM file of CA certificates trusted besides Mozilla's
            (compiled in), for ``https``/``wss`` URLs.
        client_cert: PEM client certificate chain for mutual TLS (needs
            ``client_key``).
        client_key: PEM private key of ``client_cert``.

    Raises:
        ConsumerConfigError: A TLS file that cannot be read or holds no usable
            PEM (the message names it).

    ``get_metrics()``: connected, events_received, events_emitted (acknowledged,
    or written without ``require_ack``), events_failed (failed attempts),
    ack_timeouts and unreachable (of those, no ack in time / connection attempt
    failed), events_rejected (buffer full), buffered, in_flight,
    reconnections, connection_attempts, resent, maybe_duplicated (written
    without their ack arriving, then resent or failed: duplicates at the server
    are bounded by it), unacked (written without an ack),
    average_emit_time_ms, emit_latency_p50_ms, emit_latency_p99_ms (emit to
    ack), last_error. The bus's metrics count what finally happened to
    each event (processed or dead-lettered).
    """

    url: str
    namespace: str
    port_range: tuple[int, int]
    reconnect_delay: float
    max_reconnect_delay: float
    batch_size: int
    batch_timeout: float
    buffer_limit: int
    event_names: str
    ack_timeout: float
    require_ack: bool
    def __new__(
        cls,
        socketio_server: str | object | None = None,
        # NOTE: the default is (8765, 8785); "..." because that is what the runtime
        # signature shows (pyo3 renders no tuple default) and stubtest compares them.
        port_range: tuple[int, int] = ...,
        reconnect_delay: float = 1.0,
        max_reconnect_delay: float = 30.0,
        batch_size: int = 10,
        batch_timeout: float = 0.1,
        *,
        url: str | None = None,
        namespace: str = "/",
        auth: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        event_name: str | dict[str, str] | None = None,
        event_names: Literal["dashboard", "legacy"] = "dashboard",
        buffer_limit: int = 10_000,
        emit_per_batch: str | bool | None = None,
        flush_timeout: float = 5.0,
        ack_timeout: float = 10.0,
        require_ack: bool = True,
        max_retries: int = 3,
        retry_delay: float = 1.0,
        name: str = "SocketIOConsumer",
        ca_file: str | os.PathLike[str] | None = None,
        client_cert: str | os.PathLike[str] | None = None,
        client_key: str | os.PathLike[str] | None = None,
    ) -> Self: ...

@final
class HttpConsumer(_NativeConsumer):
    """POSTs events to an HTTP endpoint: by default the Claude MPM dashboard.

    A Rust HTTP/1.1 client (keep-alive connection pool; ``https://`` through
    rustls, no OpenSSL). The default URL is the route claude-mpm's own hook
    handler posts to, ``POST http://127.0.0.1:8765/api/events`` (the dashboard
    server answers 204 and broadcasts the event to the browsers).

    Formats:

    - ``"claude-mpm"`` (default): one request per event with the body
      claude-mpm's hook handler posts, ``{"namespace": "", "event":
      "claude_event", "data": <normalized event>}``; the normalized event is
      the one :class:`SocketIOConsumer` emits (``type``/``subtype`` never
      "unknown", ``session_id``, ``cwd``, ``correlation_id`` when known, ISO
      8601 UTC ``timestamp``).
    - ``"cloudevents"``: CloudEvents 1.0 per its HTTP binding: a batch of one
      in structured mode (``application/cloudevents+json``), a larger batch in
      batched mode (``application/cloudevents-batch+json``, a JSON array).
      Attributes: ``specversion`` "1.0", ``id``, ``source``
      ``/mpm-events/<source>``, ``type`` ``mpm_events.<event type>`` (e.g.
      ``mpm_events.PreToolUse``), ``time`` (RFC 3339 UTC), and, when the event
      has a payload, ``datacontenttype`` ``application/json`` and ``data``;
      extensions ``topic``, ``correlationid`` and ``sessionid`` when known.
    - ``"json"``: :meth:`Event.to_dict` (``application/json``): one object for
      a batch of one, a JSON array for a larger batch.

    Delivery: an event is delivered only when the server answers 2xx. 408,
    429, 5xx, timeouts and connection failures fail the attempt, retried with
    the consumer's backoff (``retry_delay`` times ``retry_backoff`` per retry,
    ``max_retries`` times); a ``Retry-After`` answer (seconds or HTTP date, up
    to an hour) makes the next attempt wait at least that long. Any other
    status (other 4xx; 3xx, since redirects are not followed) is permanent:
    the event is dead-lettered at once, the reason naming the status and the
    start of the body (``HTTP 400 Bad Request from <url>: <body>``). The answer
    to a batched request (``cloudevents``, ``json``) counts for each of its
    events. A batch's requests are sent one after the other, in order, over one kept-alive
    connection; after a retryable failure the rest of the batch is not sent
    and fails with the same reason. Proxy settings of the environment are not
    used. ``shutdown()`` (``bus.stop()``) starts no further request and waits
    at most ``timeout`` for those in flight.

    TLS: trusts Mozilla's root certificates (compiled in, the same on every
    machine) plus those of ``ca_file``; ``client_cert`` and ``client_key``
    present a client certificate (mutual TLS). A certificate the client does
    not trust fails the attempt with the TLS error in the reason.

    Config: name ``HttpConsumer``, topics ``**`` (or ``topics``), priority
    HIGH, the given batch size/timeout and retries; the bus's per-call timeout
    is ``timeout * batch_size + 5`` seconds (at least 30).

    Args:
        url: ``http://`` or ``https://`` URL the events are POSTed to.
        format: ``"claude-mpm"``, ``"cloudevents"`` or ``"json"``.
        headers: Extra request headers (e.g. ``Authorization``).
        timeout: Seconds per request (connect, send, answer), default 2 (the
            hook handler's).
        batch_size: Events per batch.
        batch_timeout: Seconds to wait to fill a batch.
        max_retries: Retries of a failed attempt before the dead letter.
        retry_delay: Seconds before the first retry.
        retry_backoff: Multiplier of the delay per further retry.
        max_retry_delay: Upper bound of the backoff delay.
        topics: Topic patterns (default ``["**"]``).
        ca_file: PEM file of extra trusted CA certificates.
        client_cert: PEM client certificate chain (needs ``client_key``).
        client_key: PEM private key of ``client_cert``.
        name: The consumer's name.

    Raises:
        ConsumerConfigError: A bad ``format``, URL or header, or a TLS file
            that cannot be read or holds no usable PEM (the message names it).
        ValueError: A negative ``timeout``.

    ``get_metrics()``: url, format, events_received, events_delivered,
    events_failed (failed attempts), events_rejected (permanent answers: those
    are dead-lettered at once; the bus's ``consumer_stats`` counts every dead
    letter), requests, responses_2xx, responses_3xx,
    responses_4xx, responses_5xx, responses_other, timeouts,
    connection_errors, retry_after_honoured, in_flight, latency_p50_ms,
    latency_p95_ms, latency_p99_ms, latency_mean_ms (per request, answered
    ones), last_status, last_error. ``is_healthy`` is False after a request
    that failed in a way a retry may fix, until one succeeds.
    """

    url: str
    format: str
    timeout: float
    batch_size: int
    batch_timeout: float
    def __new__(
        cls,
        url: str = "http://127.0.0.1:8765/api/events",
        *,
        format: Literal["claude-mpm", "cloudevents", "json"] = "claude-mpm",
        headers: dict[str, str] | None = None,
        timeout: float = 2.0,
        batch_size: int = 10,
        batch_timeout: float = 0.0,
        max_retries: int = 3,
        retry_delay: float = 0.1,
        retry_backoff: float = 2.0,
        max_retry_delay: float = 30.0,
        topics: list[str] | None = None,
        ca_file: str | os.PathLike[str] | None = None,
        client_cert: str | os.PathLike[str] | None = None,
        client_key: str | os.PathLike[str] | None = None,
        name: str = "HttpConsumer",
    ) -> Self: ...

@disjoint_base
class HookEventProducer(IEventProducer):
    """Publishes hook-system events (source ``hook_handler``); compiled.

    Same methods, topics, types, priorities and payloads as the original's
    ``HookEventProducer``. With our own (non-durable) :class:`EventBus` each helper
    builds the event and hands it to the bus directly, without a coroutine per
    event; with any other bus (a test double, the original's bus, a durable bus)
    it awaits that bus's ``publish()``. A Python subclass that overrides
    :meth:`publish` is honoured by every helper. Helpers never raise for a bus
    failure: they return False and log to the ``mpm_events`` logger.

    Args:
        event_bus: The bus to publish to (any object with ``async publish(event)``).
    """

    # NOTE: extra arguments are accepted and ignored, so that a subclass's constructor
    # may take its own (as with the original).
    def __init__(self, event_bus: IEventBus, *_args: Any, **_kwargs: Any) -> None: ...
    def __class_getitem__(cls, _item: Any) -> type[Self]: ...
    @property
    def event_bus(self) -> IEventBus:
        """The bus this producer publishes to."""

    @property
    def source_name(self) -> str:
        """``"hook_handler"``."""

    def publish(self, event: Event) -> Coroutine[Any, Any, bool]:
        """Publishes one event; True if the bus accepted it (never raises)."""

    def publish_batch(self, events: list[Event]) -> Coroutine[Any, Any, int]:
        """Publishes several events one by one; returns how many were accepted."""

    def publish_response(
        self, response_data: dict[str, Any], correlation_id: str | None = None
    ) -> Coroutine[Any, Any, bool]:
        """``hook.response`` / ``AssistantResponse``, HIGH, data ``response_data``."""

    def publish_tool_use(
        self,
        tool_name: str,
        tool_params: dict[str, Any],
        tool_result: Any | None = None,
        correlation_id: str | None = None,
    ) -> Coroutine[Any, Any, bool]:
        """``hook.tool`` / ``ToolUse``, NORMAL, data ``{tool, params, result}``."""

    def publish_error(
        self,
        error_type: str,
        error_message: str,
        error_details: dict[str, Any] | None = None,
        correlation_id: str | None = None,
    ) -> Coroutine[Any, Any, bool]:
        """``hook.error`` / ``Error``, CRITICAL, data ``{error_type, message, details}``."""

    def publish_subagent_event(
        self,
        subagent_name: str,
        event_type: str,
        event_data: dict[str, Any],
        correlation_id: str | None = None,
    ) -> Coroutine[Any, Any, bool]:
        """``hook.subagent.<event_type lowercased>`` / ``Subagent<event_type>``, NORMAL,
        data ``{subagent, **event_data}``."""

    def publish_raw_hook_event(
        self, hook_type: str, hook_data: dict[str, Any], correlation_id: str | None = None
    ) -> Coroutine[Any, Any, bool]:
        """A hook event whose topic (``hook.response|tool|error|subagent|generic``) and
        priority (CRITICAL for error/critical, HIGH for response) follow ``hook_type``."""

    def get_metrics(self) -> dict[str, Any]:
        """``{events_published, events_failed, batch_published}``."""

    def _count(self, published: int, failed: int, batches: int) -> None: ...
