"""The usage examples of event-bus-system.md, with only the import line changed."""

from __future__ import annotations

from unittest.mock import Mock

from conftest import Recorder
from helpers.sio_helpers import Server
from mpm_events import (
    ConsumerConfig,
    ConsumerPriority,
    Event,
    EventBus,
    HookEventProducer,
    IEventConsumer,
    SystemEventProducer,
)


async def test_basic_setup_example(stop_after):
    # from claude_mpm.services.events import EventBus, SocketIOConsumer, LoggingConsumer
    from mpm_events import EventBus, LoggingConsumer, SocketIOConsumer

    dashboard = await Server().start()  # a real python-socketio server, on a free port
    try:
        bus = stop_after(EventBus())
        await bus.start()

        # the example's SocketIOConsumer(), pointed at the dashboard's port
        socketio_consumer = SocketIOConsumer(port_range=(dashboard.port, dashboard.port + 20))
        assert await bus.subscribe(socketio_consumer)

        logging_consumer = LoggingConsumer(topics=["hook.**"])
        assert await bus.subscribe(logging_consumer)
        producer = HookEventProducer(bus)
        assert await producer.publish_response({"content": "x"})
        await bus.join(timeout=10)
        await bus.stop(timeout=5)  # flushes the Socket.IO buffer
        await dashboard.wait_for(lambda: len(dashboard.events()) >= 1)
        (got,) = dashboard.events()
        # By default the consumer speaks the Claude MPM dashboard's inbound protocol.
        assert got["event"] == "claude_event"
        p = got["data"]
        assert (p["topic"], p["type"], p["subtype"]) == (
            "hook.response",
            "hook",
            "assistant_response",
        )
        assert p["data"] == {"content": "x"}
        assert logging_consumer.get_metrics()["events_logged"] == 1
    finally:
        await dashboard.stop()


async def test_publishing_events_example(stop_after):
    bus = stop_after(EventBus())
    await bus.start()
    seen = Recorder("seen", ["hook.**"])
    await bus.subscribe(seen)

    # Create producer
    producer = HookEventProducer(bus)

    # Publish events
    assert await producer.publish_response(
        {
            "content": "Assistant response text",
            "model": "claude-3",
        }
    )

    assert await producer.publish_tool_use(
        tool_name="Read",
        tool_params={"file_path": "/path/to/file"},
        tool_result="File contents",
    )
    await bus.stop()
    assert sorted(seen.topics_seen) == ["hook.response", "hook.tool"]
    tool = next(c.event for c in seen.calls if c.topic == "hook.tool")
    assert tool.data == {
        "tool": "Read",
        "params": {"file_path": "/path/to/file"},
        "result": "File contents",
    }


async def test_custom_consumer_example(capsys, stop_after):
    class CustomConsumer(IEventConsumer):
        def __init__(self):
            self._config = ConsumerConfig(
                name="CustomConsumer",
                topics=["system.**"],  # Subscribe to system events
                priority=ConsumerPriority.NORMAL,
            )

        async def consume(self, event: Event) -> bool:
            # Process event
            print(f"Processing: {event.topic} - {event.type}")
            return True

        # Implement other required methods...
        async def initialize(self) -> bool:
            return True

        async def consume_batch(self, events: list[Event]) -> int:
            return len(events)

        async def shutdown(self) -> None:
            pass

        @property
        def config(self) -> ConsumerConfig:
            return self._config

        @property
        def is_healthy(self) -> bool:
            return True

        def get_metrics(self) -> dict:
            return {}

    bus = stop_after(EventBus())
    await bus.start()
    assert await bus.subscribe(CustomConsumer())
    system = SystemEventProducer(bus)
    assert await system.publish_startup("svc", "1.0")
    assert await HookEventProducer(bus).publish_response({"content": "not for it"})
    await bus.stop()
    out = capsys.readouterr().out.splitlines()
    assert out == ["Processing: system.lifecycle.startup - ServiceStartup"]


async def test_configuration_example(stop_after):
    bus = EventBus(
        max_queue_size=10000,  # Maximum queued events
        process_interval=0.01,  # Processing frequency
        batch_timeout=0.1,  # Batch wait time
        enable_metrics=True,  # Track metrics
        enable_persistence=False,  # Persist to disk
    )
    stop_after(bus)

    def my_filter(event):
        return event.data.get("keep", True)

    def my_transform(event):
        event.data["seen"] = True
        return event

    config = ConsumerConfig(
        name="MyConsumer",
        topics=["hook.**"],  # Topics to subscribe
        priority=ConsumerPriority.HIGH,
        batch_size=10,  # Process in batches
        batch_timeout=0.5,  # Batch wait time
        max_retries=3,  # Retry failed events
        retry_backoff=2.0,  # Backoff multiplier
        filter_func=my_filter,  # Event filter
        transform_func=my_transform,  # Event transformer
    )
    assert config.priority is ConsumerPriority.HIGH
    assert (config.batch_size, config.batch_timeout, config.max_retries) == (10, 0.5, 3)

    c = Recorder("MyConsumer")
    c._config = config
    await bus.start()
    await bus.subscribe(c)
    producer = HookEventProducer(bus)
    await producer.publish_response({"keep": True})
    await producer.publish_response({"keep": False})
    await bus.stop()
    assert len(c.batches) == 1
    assert [call.event.data for call in c.calls] == [{"keep": True, "seen": True}]


async def test_migration_example(stop_after):
    event_bus = stop_after(EventBus())
    await event_bus.start()
    seen = Recorder("seen")
    await event_bus.subscribe(seen)
    response_data = {"content": "hello"}

    # New: Publish to event bus
    producer = HookEventProducer(event_bus)
    await producer.publish_response(response_data)

    await event_bus.stop()
    assert [c.event.data for c in seen.calls] == [response_data]


async def test_testing_example_with_a_mock_bus():
    # Easy to test - mock event bus
    mock_bus = Mock()
    producer = HookEventProducer(mock_bus)
    data = {"content": "x"}
    await producer.publish_response(data)
    mock_bus.publish.assert_called_once()
    (event,) = mock_bus.publish.call_args.args
    assert event.topic == "hook.response"
    assert event.data == data
