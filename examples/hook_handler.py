"""A Claude Code hook handler that publishes each hook event to the bus.

Claude Code runs a hook command with one JSON object on stdin, for example::

    {"hook_event_name": "PreToolUse", "session_id": "abc123", "cwd": "/repo",
     "tool_name": "Read", "tool_input": {"file_path": "/repo/README.md"}}

This handler publishes it with ``HookEventProducer.publish_raw_hook_event`` (topic by
hook type: ``PreToolUse`` -> ``hook.tool``, ``UserPromptSubmit`` -> ``hook.generic``,
...; the session id is the correlation id), waits until the bus has handled it, stops
the bus and prints one JSON line, ``{"continue": true}``, as Claude Code expects. It
never blocks Claude: on bad input or a bus failure it says why on stderr and still
prints ``{"continue": true}`` and exits 0.

Where the events go: a ``LoggingConsumer`` appends them to the file named by
``MPM_EVENTS_HOOK_LOG`` (default ``mpm-events-hooks.log`` in the temp dir). With
``MPM_EVENTS_DASHBOARD_URL`` set (e.g. ``http://127.0.0.1:8765``) they are also sent
to that Claude MPM dashboard with ``SocketIOConsumer``; it is off by default so the
handler needs no server. To try it::

    echo '{"hook_event_name": "PreToolUse", "tool_name": "Read"}' \\
        | python examples/hook_handler.py
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from mpm_events import EventBus, HookEventProducer, LoggingConsumer, SocketIOConsumer

CONTINUE = json.dumps({"continue": True})


def log_path() -> Path:
    default = Path(tempfile.gettempdir()) / "mpm-events-hooks.log"
    return Path(os.environ.get("MPM_EVENTS_HOOK_LOG") or default)


def parse_hook(text: str) -> dict[str, Any]:
    """The hook object from stdin; ValueError says what is wrong with it."""
    try:
        hook = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"stdin is not JSON: {exc}") from None
    if not isinstance(hook, dict):
        raise ValueError(f"expected a JSON object, got {type(hook).__name__}")
    name = hook.get("hook_event_name")
    if not isinstance(name, str) or not name:
        raise ValueError("the hook object has no 'hook_event_name'")
    return hook


async def publish(hook: dict[str, Any]) -> bool:
    handler = logging.FileHandler(log_path(), encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    events_logger = logging.getLogger("mpm_events.events")
    events_logger.addHandler(handler)
    events_logger.setLevel(logging.INFO)
    events_logger.propagate = False

    bus = EventBus()
    await bus.start()
    try:
        await bus.subscribe(LoggingConsumer(topics=["hook.**"]))
        url = os.environ.get("MPM_EVENTS_DASHBOARD_URL")
        if url:
            await bus.subscribe(SocketIOConsumer(url=url))
        producer = HookEventProducer(bus)
        session_id = hook.get("session_id")
        accepted = await producer.publish_raw_hook_event(
            hook["hook_event_name"],
            hook,
            correlation_id=session_id if isinstance(session_id, str) else None,
        )
        # A hook process is short-lived: wait until the event is handled before exit.
        handled = await bus.join(timeout=5)
        return bool(accepted and handled)
    finally:
        await bus.stop(timeout=5)
        events_logger.removeHandler(handler)
        handler.close()


def main() -> int:
    try:
        hook = parse_hook(sys.stdin.read())
    except ValueError as exc:
        print(f"mpm-events hook handler: bad hook input: {exc}", file=sys.stderr)
    else:
        try:
            if not asyncio.run(publish(hook)):
                print("mpm-events hook handler: the event was not delivered", file=sys.stderr)
        except Exception as exc:
            print(f"mpm-events hook handler: {exc!r}", file=sys.stderr)
    # Claude Code reads the hook's answer from stdout; never block the session.
    print(CONTINUE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
