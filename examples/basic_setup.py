"""The seed document's "Basic Setup" and "Publishing Events", runnable.

Starts a bus, subscribes a ``LoggingConsumer`` on ``hook.**`` whose records go to a
log file, publishes an assistant response and a tool use with ``HookEventProducer``,
waits until both are handled and stops the bus. Run it as::

    python examples/basic_setup.py [LOG_FILE]

The log file defaults to a fresh file in the temp dir; its path is printed at the end.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import tempfile
from pathlib import Path

from mpm_events import EventBus, HookEventProducer, LoggingConsumer


async def run(log_file: Path) -> int:
    # LoggingConsumer formats each event in Rust and hands the record to Python logging
    # (logger "mpm_events.events"); a FileHandler sends it to the file.
    handler = logging.FileHandler(log_file, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    events_logger = logging.getLogger("mpm_events.events")
    events_logger.addHandler(handler)
    events_logger.setLevel(logging.INFO)
    events_logger.propagate = False

    # Create and start event bus
    bus = EventBus()
    await bus.start()
    try:
        # Add consumers. The seed also subscribes SocketIOConsumer(), which connects to
        # a Claude MPM dashboard at http://127.0.0.1:8765; it is left out here so the
        # example needs no server (with the dashboard running, add
        # `await bus.subscribe(SocketIOConsumer())`).
        logging_consumer = LoggingConsumer(topics=["hook.**"])
        await bus.subscribe(logging_consumer)

        # Create producer
        producer = HookEventProducer(bus)

        # Publish events
        accepted = 0
        accepted += await producer.publish_response(
            {
                "content": "Assistant response text",
                "model": "claude-3",
            }
        )
        accepted += await producer.publish_tool_use(
            tool_name="Read",
            tool_params={"file_path": "/path/to/file"},
            tool_result="File contents",
        )

        # Every accepted event fully handled (the log records exist) before stopping.
        if not await bus.join(timeout=10):
            print("the bus did not finish its events within 10 s", file=sys.stderr)
            return 1
        print(f"published {accepted} events")
    finally:
        await bus.stop()
        events_logger.removeHandler(handler)
        handler.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args:
        log_file = Path(args[0])
    else:
        fd, name = tempfile.mkstemp(prefix="mpm-events-", suffix=".log")
        os.close(fd)
        log_file = Path(name)
    code = asyncio.run(run(log_file))
    print(f"log: {log_file}")
    return code


if __name__ == "__main__":
    sys.exit(main())
