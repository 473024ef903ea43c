"""One bus across processes on Redis Streams: ``EventBus(backend="redis://...")``
(issue 13).

Each test starts its own ``redis-server`` (``tests/helpers/redis_server.py``: a free
port, ``--appendfsync always``, a temporary directory) and real processes
(``tests/helpers/shared_log_child.py``, the same children as the SQLite tests): a
publisher in one process reaches a consumer in another; two names x three instances
fan out and share exactly; a consumer SIGKILLed mid-stream loses nothing after its
claims expire (duplicates bounded by what it had in flight); dead letters of a
consumer in one process are seen and replayed from another; Redis killed under a
running bus: ``publish`` returns False within the connect timeout, and True again
once the server is back, with both committed events in the log; bad URLs and an
unreachable server raise clear errors. The cross-process tests the SQLite log has too
(publisher to consumer, two names x three instances, a consumer SIGKILLed, dead
letters across processes) run on both backends in ``tests/test_shared_log.py``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.redis_server import RedisServer
from mpm_events import EventBus, PersistenceError
from test_shared_log import consumer, ev, handled, wait_for


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    s = RedisServer(tmp_path)
    yield s
    s.kill()


@pytest.fixture
def url(server: RedisServer) -> str:
    return server.url(prefix=f"t{uuid.uuid4().hex[:8]}")


def test_bad_redis_urls_and_an_unreachable_server_are_clear(server: RedisServer) -> None:
    with pytest.raises(ValueError, match="colour"):
        EventBus(backend=f"redis://127.0.0.1:{server.port}/0?colour=red")
    for bad in ("0", "-1", "soon", "inf"):
        with pytest.raises(ValueError, match="block_timeout must be a positive number"):
            EventBus(backend=server.url() + f"&block_timeout={bad}")
    with pytest.raises(ValueError, match="hard_limit"):
        EventBus(backend=server.url(), persistence_hard_limit_bytes=1 << 20)
    server.kill()
    with pytest.raises(PersistenceError, match=f"127.0.0.1:{server.port}"):
        EventBus(backend=server.url())


async def test_redis_down_at_publish_returns_false_quickly_then_recovers(
    server: RedisServer, url: str, tmp_path: Path
) -> None:
    bus = EventBus(backend=url)
    await bus.start()
    assert await bus.publish(ev(0)) is True
    server.kill()
    began = time.monotonic()
    assert await bus.publish(ev(1)) is False
    took = time.monotonic() - began
    # Bounded by the connect timeout (5 s) of at most two attempts, not a hang.
    assert took < 11, took
    assert server.start(), "redis-server did not come back"
    # The next publish reconnects; nothing was dropped silently.
    assert await bus.publish(ev(2)) is True
    stats = bus.get_metrics()["shared_log"]
    assert (stats["events_appended"], stats["append_failures"]) == (2, 1)
    await bus.stop(5)
    # Both committed events are in the log (appendfsync always), read by a consumer
    # process that starts only now.
    out = tmp_path / "late.txt"
    c = consumer(url, "late", out, start="earliest")
    wait_for(lambda: len(handled(out)) >= 2, what="both committed events")
    c.terminate()
    assert sorted(i for _, i, _ in handled(out)) == [0, 2]
