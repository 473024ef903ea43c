"""The bus on a real local Redis Cluster (issue 13): ``redis+cluster://h:p,h:p,h:p``.

``tests/helpers/redis_cluster.py`` starts three masters (``--cluster-enabled yes``,
16384 slots over three nodes, no replicas) and stops them after. Every key of one bus
is under the hash tag ``{prefix}``, so the Lua scripts and pipelines run in one slot:
a publisher process and a consumer process exchange events, dead letters are moved
and replayed, ``mpm-events hook`` appends, and every key of the bus is on the one
node that owns the tag's slot.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.redis_cluster import RedisCluster, _cli
from mpm_events._core import _log_ack, _log_append, _log_range, _log_read
from test_redis_spool import hook
from test_shared_log import Child, consumer, handled, wait_for


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    c = RedisCluster(tmp_path_factory.mktemp("cluster"))
    yield c
    c.kill()


def test_a_publisher_process_reaches_a_consumer_process_on_a_cluster(
    cluster: RedisCluster, tmp_path: Path
) -> None:
    prefix = f"c{uuid.uuid4().hex[:8]}"
    url = cluster.url(prefix)
    out = tmp_path / "got.txt"
    c = consumer(url, "cl", out, start="earliest")
    p = Child("publish", url, "pub", "40", "10")
    p.wait_line(lambda line: line == "DONE")
    p.wait_exit()
    wait_for(lambda: len(handled(out)) >= 40, what="40 events through the cluster")
    c.terminate()
    got = [i for _, i, _ in handled(out)]
    assert got == list(range(40)), f"lost={len(set(range(40)) - set(got))} got={got}"
    # Every key of the bus in the slot of its hash tag, on one node.
    owner = cluster.slot_owner(f"{{{prefix}}}:stream")
    keys = _cli(["-p", str(owner), "--scan", "--pattern", f"{{{prefix}}}*"]).split()
    assert f"{{{prefix}}}:stream" in keys and f"{{{prefix}}}:meta" in keys, keys
    for other in cluster.ports:
        if other != owner:
            assert _cli(["-p", str(other), "dbsize"]).strip() in ("0", ""), other


def test_dead_letters_replay_and_the_hook_on_a_cluster(cluster: RedisCluster) -> None:
    url = cluster.url(f"c{uuid.uuid4().hex[:8]}")
    ids = _log_append(url, [{"topic": "log.ev", "data": {"i": i}} for i in range(3)])
    assert len(ids) == 3 and not any(i.startswith("spool:") for i in ids), ids
    got = _log_read(url, "g", "i1", 10)
    assert [e["data"]["i"] for e in got] == [0, 1, 2]
    assert _log_ack(url, "g", [e["entry_id"] for e in got]) == 3
    assert hook(url, "on the cluster") == ""
    assert [e["data"].get("prompt") for e in _log_range(url)][-1] == "on the cluster"
