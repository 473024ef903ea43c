"""Python glue of the compiled bus (private), one module per role.

``loop`` (the event-loop integration, bottom layer), ``workers`` (threads for
plain-function consumers), ``durable`` (persistence flows) and ``control``
(subscribe/unsubscribe/join/stop, interpreter exit).
"""

# NOTE: this module is the complete list of the Python functions the compiled
# extension (src/python/) calls: it imports them by name from mpm_events._bus.
# Add a name here when Rust starts calling it; nothing else belongs here.
from mpm_events._bus.control import join, stop, subscribe, to_thread, unsubscribe
from mpm_events._bus.durable import count_true, replay, start_redelivery
from mpm_events._bus.loop import (
    attach,
    continue_job,
    detach,
    rebind,
    rebind_if_gone,
    resume_from,
    spawn,
)
from mpm_events._bus.workers import start_sync_worker

__all__ = [
    "attach",
    "continue_job",
    "count_true",
    "detach",
    "join",
    "rebind",
    "rebind_if_gone",
    "replay",
    "resume_from",
    "spawn",
    "start_redelivery",
    "start_sync_worker",
    "stop",
    "subscribe",
    "to_thread",
    "unsubscribe",
]
