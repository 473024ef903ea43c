"""Claude Code hook input -> one mpm-events event, as claude-mpm's hook handler does it.

Claude Code runs a hook command with one JSON object on stdin (``hook_event_name``,
``session_id``, ``cwd`` and per-hook fields such as ``tool_name``, ``tool_input``,
``tool_response``, ``prompt``, ``agent_type``, ``reason``). claude-mpm 5.9.10's handler
(``claude_mpm.hooks.claude_hooks.hook_handler``, ``event_handlers.py``) turns it into a
normalized dashboard event of ``type`` ``"hook"`` and a ``subtype`` per hook;
:func:`convert` gives the same for the same input:

- ``UserPromptSubmit`` -> topic ``hook.user_prompt``, subtype ``user_prompt``
- ``PreToolUse`` -> ``hook.pre_tool``, ``pre_tool``
- ``PostToolUse`` -> ``hook.post_tool``, ``post_tool``
- ``Notification`` -> ``hook.notification``, ``notification``
- ``Stop`` -> ``hook.stop``, ``stop``
- ``SubagentStart`` / ``SubagentStop`` -> ``hook.subagent_start`` / ``hook.subagent_stop``
- ``SessionStart`` -> ``hook.session_start``, ``session_start``
- ``AssistantResponse`` -> ``hook.assistant_response``, ``assistant_response``
- ``SessionEnd``, ``PreCompact`` and any other name -> the name in snake case
  (``hook.session_end``, ``hook.pre_compact``, ...; claude-mpm's handler sends nothing
  for these, the dashboard shows them so)

The dashboard ``type`` is ``hook`` for all of them. The event's ``type`` is the hook
name itself, so our Socket.IO consumer's dashboard mapping
(``src/sinks/socketio/dashboard.rs``) gives the same ``type``/``subtype``;
its ``data`` is the hook object as Claude Code sent it (``session_id`` and ``cwd`` at
its top level, where the dashboard mapping looks for them), plus ``correlation_id``
for tool hooks.

Pre/post tool pairing (``correlation_id``): claude-mpm's ``PreToolUse`` makes a
uuid, stores it in a file per session (``.claude-mpm/correlations/`` under the
process's working directory) and its ``PostToolUse``, a separate process, reads and
deletes it: so the pair gets one id, but two tool calls in flight in one session
overwrite each other's. Here:

- when the hook carries Claude Code's ``tool_use_id`` (both hooks of one call carry
  the same), that is the correlation id: nothing to store;
- else ``PreToolUse`` stores a fresh uuid in a :class:`CorrelationStore` file keyed
  by session, tool name and the tool input, and ``PostToolUse`` (which carries the
  same ``tool_name`` and ``tool_input``) claims and deletes it; as in claude-mpm,
  without a ``session_id`` nothing is stored, and a post without its pre gets none.

Not reproduced (claude-mpm emits them beside the main event): ``hook_execution``
(timing of each hook), ``command_acknowledged`` (before ``user_prompt``),
``todo_updated`` (a ``TodoWrite`` pre-tool), ``subagent_start`` (a ``Task``
pre-tool) and ``token_usage_updated`` (a ``Stop`` with usage); nor the data it derives
(git branch, security risk, ...). It skips ``user_prompt`` for prompts starting with
``/mpm``; we publish every hook.

This module imports only ``os``, ``time``, ``zlib`` and :mod:`mpm_events._hookjson`
(the ``json`` module's C parser and encoder without ``import json``, whose ``re``,
``enum`` and ``functools`` cost a hook process 5-10 ms): a hook process is
short-lived.
"""

from __future__ import annotations

import os
import time
import zlib

from mpm_events import _hookjson

# NOTE: typing is not imported at run time (import cost in a hook process).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

#: The subtypes claude-mpm 5.9.10's handler emits for the hooks it routes
#: (``hook_handler.py`` ``_route_event``), and the two more Claude Code hooks the
#: dashboard mapping knows by name.
HOOK_SUBTYPES: dict[str, str] = {
    "UserPromptSubmit": "user_prompt",
    "PreToolUse": "pre_tool",
    "PostToolUse": "post_tool",
    "Notification": "notification",
    "Stop": "stop",
    "SubagentStop": "subagent_stop",
    "SubagentStart": "subagent_start",
    "SessionStart": "session_start",
    "AssistantResponse": "assistant_response",
    "SessionEnd": "session_end",
    "PreCompact": "pre_compact",
}

#: The fields claude-mpm's handler reads the hook name from, in its order.
NAME_FIELDS = ("hook_event_name", "event", "type", "event_type", "hook_event_type")

#: ``source`` of the events: what claude-mpm's normalized hook events carry.
SOURCE = "hook"

#: How long an unclaimed pre-tool correlation is kept (claude-mpm: one hour).
CORRELATION_TTL_S = 3600.0


class HookInputError(ValueError):
    """The hook input is not a usable Claude Code hook object (the message says why)."""


class HookEvent:
    """One converted hook: the fields of the event to publish.

    Attributes:
        topic: ``hook.<subtype>``.
        type: The hook name (``PreToolUse``, ...): the event type.
        subtype: The dashboard's subtype (``pre_tool``, ...).
        source: ``"hook"``.
        data: The hook object (a copy), with ``correlation_id`` for tool hooks.
        session_id: The hook's session id, or None.
        cwd: The hook's working directory, or None.
        correlation_id: Pairs a ``PreToolUse`` with its ``PostToolUse``; else None.
    """

    __slots__ = (
        "correlation_id",
        "cwd",
        "data",
        "session_id",
        "source",
        "subtype",
        "topic",
        "type",
    )

    def __init__(
        self,
        topic: str,
        type: str,
        subtype: str,
        data: dict[str, Any],
        session_id: str | None,
        cwd: str | None,
        correlation_id: str | None,
    ) -> None:
        self.topic = topic
        self.type = type
        self.subtype = subtype
        self.source = SOURCE
        self.data = data
        self.session_id = session_id
        self.cwd = cwd
        self.correlation_id = correlation_id

    def __repr__(self) -> str:
        return (
            f"HookEvent(topic={self.topic!r}, type={self.type!r}, "
            f"session_id={self.session_id!r}, correlation_id={self.correlation_id!r})"
        )


def snake_case(text: str) -> str:
    """``PreToolUse`` -> ``pre_tool_use``, ``HTTPRequest`` -> ``http_request``.

    The same rule as ``dashboard::snake_case`` in ``src/sinks/socketio/dashboard.rs``.
    """
    out: list[str] = []
    n = len(text)
    for i, c in enumerate(text):
        if c.isalnum():
            if c.isupper():
                prev = text[i - 1] if i > 0 else ""
                nxt = text[i + 1] if i + 1 < n else ""
                boundary = bool(prev) and (
                    prev.islower()
                    or (prev.isascii() and prev.isdigit())
                    or (prev.isupper() and nxt.islower())
                )
                if boundary and out and out[-1] != "_":
                    out.append("_")
                out.append(c.lower())
            else:
                out.append(c)
        elif out and out[-1] != "_":
            out.append("_")
    return "".join(out).rstrip("_")


def subtype_of(hook_name: str) -> str:
    """The dashboard subtype (and our topic's second segment) for a hook name."""
    known = HOOK_SUBTYPES.get(hook_name)
    if known is not None:
        return known
    sub = snake_case(hook_name)
    return sub if sub and sub != "unknown" else "generic"


def parse(text: str | bytes) -> dict[str, Any]:
    """The hook object in ``text`` (stdin).

    Raises:
        HookInputError: Empty input, not JSON, not a JSON object, or no hook name.
    """
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise HookInputError(f"stdin is not UTF-8: {exc}") from None
    if not text.strip():
        raise HookInputError("stdin is empty (expected one JSON object)")
    try:
        hook = _hookjson.loads(text)
    except ValueError as exc:  # NOTE: json.JSONDecodeError
        raise HookInputError(f"stdin is not JSON: {exc}") from None
    if not isinstance(hook, dict):
        raise HookInputError(f"expected a JSON object on stdin, got a JSON {_json_kind(hook)}")
    hook_name(hook)  # raises when there is none
    return hook


def hook_name(hook: dict[str, Any]) -> str:
    """The hook's name, from the first of :data:`NAME_FIELDS` that is a non-empty string.

    Raises:
        HookInputError: None of them is.
    """
    for key in NAME_FIELDS:
        value = hook.get(key)
        if isinstance(value, str) and value:
            return value
    raise HookInputError("the hook object has no 'hook_event_name'")


def convert(hook: dict[str, Any], correlations: CorrelationStore | None = None) -> HookEvent:
    """Turns one Claude Code hook object into the event to publish.

    Args:
        hook: The hook object as Claude Code sent it (see :func:`parse`).
        correlations: Where a ``PreToolUse`` without ``tool_use_id`` leaves its
            correlation id for its ``PostToolUse`` (another process); None for
            :meth:`CorrelationStore.default`.

    Raises:
        HookInputError: The object has no hook name.
    """
    name = hook_name(hook)
    subtype = subtype_of(name)
    data = dict(hook)
    data.setdefault("hook_event_name", name)
    session_id = _text(hook, "session_id", "sessionId")
    cwd = _text(hook, "cwd", "working_directory", "workingDirectory")
    correlation_id = None
    if subtype in ("pre_tool", "post_tool"):
        correlation_id = _text(hook, "tool_use_id")
        if correlation_id is None and session_id is not None:
            store = correlations if correlations is not None else CorrelationStore.default()
            key = store.key(session_id, hook.get("tool_name"), hook.get("tool_input"))
            if subtype == "pre_tool":
                correlation_id = new_uuid()
                store.put(key, correlation_id)
            else:
                correlation_id = store.take(key)
        if correlation_id is not None:
            data["correlation_id"] = correlation_id
    return HookEvent(
        topic=f"hook.{subtype}",
        type=name,
        subtype=subtype,
        data=data,
        session_id=session_id,
        cwd=cwd,
        correlation_id=correlation_id,
    )


class CorrelationStore:
    """Pre-tool correlation ids left for the post-tool hook's process: one small file
    per tool call in flight, named by session, tool name and a CRC of the tool input.

    ``put`` writes a temp file and renames it into place (atomic); ``take`` claims the
    file by renaming it to a name of its own (so of two racing posts only one gets
    it), reads and deletes it. Files older than :data:`CORRELATION_TTL_S` are removed
    now and then by ``put``. Failures to write or read only lose the pairing.

    Args:
        directory: Where the files go (created on first ``put``).
    """

    def __init__(self, directory: str) -> None:
        self.directory = directory

    @classmethod
    def default(cls) -> CorrelationStore:
        """``$MPM_EVENTS_HOOK_STATE_DIR``, else ``~/.claude-mpm/mpm-events/correlations``."""
        directory = os.environ.get("MPM_EVENTS_HOOK_STATE_DIR") or os.path.join(
            os.path.expanduser("~"), ".claude-mpm", "mpm-events", "correlations"
        )
        return cls(directory)

    @staticmethod
    def key(session_id: str, tool_name: Any, tool_input: Any) -> str:
        """The file name of one tool call's correlation."""
        tool = tool_name if isinstance(tool_name, str) else ""
        try:
            blob = _hookjson.dumps([tool, tool_input], sort_keys=True, default=str)
        except (TypeError, ValueError):
            blob = repr([tool, tool_input])
        crc = zlib.crc32(blob.encode("utf-8", "surrogatepass"))
        return f"{_safe(session_id)}.{_safe(tool)}.{crc:08x}.json"

    def put(self, key: str, correlation_id: str) -> bool:
        """Leaves ``correlation_id`` under ``key``; False if it could not be written."""
        path = os.path.join(self.directory, key)
        tmp = f"{path}.{os.getpid()}.tmp"
        try:
            os.makedirs(self.directory, exist_ok=True)
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(_hookjson.dumps({"correlation_id": correlation_id, "at": time.time()}))
            os.replace(tmp, path)
        except OSError:
            _unlink(tmp)
            return False
        if os.urandom(1)[0] < 4:  # NOTE: about one put in 64 sweeps stale files
            self.sweep()
        return True

    def take(self, key: str) -> str | None:
        """Claims and deletes the correlation under ``key``; None if there is none."""
        path = os.path.join(self.directory, key)
        claimed = f"{path}.{os.getpid()}.taken"
        try:
            os.rename(path, claimed)
        except OSError:
            return None
        try:
            with open(claimed, encoding="utf-8") as f:
                value = _hookjson.loads(f.read()).get("correlation_id")
        except (OSError, ValueError, AttributeError):
            value = None
        finally:
            _unlink(claimed)
        return value if isinstance(value, str) and value else None

    def sweep(self, max_age_s: float = CORRELATION_TTL_S) -> int:
        """Deletes files older than ``max_age_s``; returns how many."""
        removed = 0
        cutoff = time.time() - max_age_s
        try:
            entries = list(os.scandir(self.directory))
        except OSError:
            return 0
        for entry in entries:
            try:
                if entry.stat().st_mtime < cutoff:
                    os.unlink(entry.path)
                    removed += 1
            except OSError:
                pass
        return removed


def new_uuid() -> str:
    """A random (version 4) UUID string, without importing ``uuid``."""
    b = bytearray(os.urandom(16))
    b[6] = (b[6] & 0x0F) | 0x40
    b[8] = (b[8] & 0x3F) | 0x80
    h = b.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _text(hook: dict[str, Any], *keys: str) -> str | None:
    """The first non-empty string under one of ``keys``."""
    for key in keys:
        value = hook.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def _safe(text: str) -> str:
    """``text`` if it is a short file-name-safe word, else a CRC of it."""
    if text and len(text) <= 96 and all(c.isascii() and (c.isalnum() or c in "-_") for c in text):
        return text
    return f"x{zlib.crc32(text.encode('utf-8', 'surrogatepass')):08x}"


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _json_kind(value: Any) -> str:
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if value is None:
        return "null"
    return "number"
