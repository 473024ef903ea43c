"""Run the benchmark suite: the original and ours, alternately, several rounds.

    python benches/run.py             # full run (what ``make bench`` does)
    python benches/run.py --quick     # smoke run: one round, small sizes
    python benches/run.py --rounds 3 --only W1,W4

Writes a table to stdout, ``benches/results/latest.json`` and ``docs/benchmarks.md``
(with charts under ``docs/img/``). See ``benches/README.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import impls  # noqa: E402
import peers  # noqa: E402
import report  # noqa: E402
import workloads as wl  # noqa: E402

REPO = HERE.parent
RESULTS = HERE / "results" / "latest.json"
DOCS = REPO / "docs" / "benchmarks.md"
IMG = REPO / "docs" / "img"

MEASURE_TIMEOUT_S = 120.0

SUBSCRIPTION_POINTS = [1, 10, 100, 1_000, 10_000]
CONSUMER_POINTS = [1, 2, 4, 8, 16, 32]


@dataclass(frozen=True)
class Sizes:
    """Event counts and time budgets; ``--quick`` shrinks all of them."""

    w1: int = 200_000
    w2: int = 100_000
    w3_seconds: float = 1.0
    w3_max: int = 100_000
    w4: int = 50_000
    w5: int = 100_000
    w6: int = 1_000_000
    w7_runs: int = 21
    w8: int = 51_200
    w10_runs: int = 20
    w10_original_runs: int = 5
    chart_seconds: float = 0.4
    chart_max: int = 100_000
    chart_rounds: int = 3
    floor_awaits: int = 2_000_000
    # Peers (issue 16): pyee moves ~60k events/s here, bubus a few hundred; fixed
    # counts keep their rounds to a second or two (rates, not totals, are compared).
    pyee_w1: int = 50_000
    pyee_w2: int = 20_000
    bubus_w1: int = 500
    bubus_w2: int = 200
    w13_seconds: float = 5.0
    w13_rounds: int = 2


QUICK = Sizes(
    w1=20_000,
    w2=10_000,
    w3_seconds=0.2,
    w3_max=10_000,
    w4=10_000,
    w5=20_000,
    w6=100_000,
    w7_runs=5,
    w8=10_240,
    w10_runs=5,
    w10_original_runs=2,
    chart_seconds=0.1,
    chart_max=10_000,
    chart_rounds=1,
    floor_awaits=500_000,
    pyee_w1=10_000,
    pyee_w2=5_000,
    bubus_w1=200,
    bubus_w2=100,
    w13_seconds=1.0,
    w13_rounds=1,
)


@dataclass(frozen=True)
class Workload:
    key: str
    title: str
    metric: str
    unit: str
    higher_is_better: bool
    target: str


WORKLOADS = [
    Workload(
        "W1",
        "hook stream, 1 consumer on hook.**",
        "throughput",
        "events/s",
        True,
        ">= 10x; >= 60% of floor; >= 10x pyee",
    ),
    Workload(
        "W1d",
        "W1, the consumer reads event.data['tool']",
        "throughput",
        "events/s",
        True,
        ">= 50% of floor",
    ),
    Workload(
        "W2", "fan-out, 5 consumers", "throughput", "events/s", True, ">= 10x; >= 50% of floor"
    ),
    Workload(
        "W3",
        "W2 + 1,000 idle wildcard subscriptions",
        "throughput",
        "events/s",
        True,
        ">= 1000x, and >= 80% of our W2",
    ),
    Workload("W4", "publish latency while W1 runs", "p99", "us", False, "p99 < 20 us"),
    Workload(
        "W5", "memory per event queued behind a paused consumer", "RSS", "B/event", False, "<= 1/3"
    ),
    Workload(
        "W6",
        "publish_batch into MetricsConsumer",
        "throughput",
        "events/s",
        True,
        ">= 80% of criterion publish_many/2048",
    ),
    Workload("W7", "import time over a bare interpreter", "added", "ms", False, "<= 30 ms"),
    Workload(
        "W8",
        "durable sync publishing, 256 tasks (issue 4)",
        "throughput",
        "events/s",
        True,
        ">= 50% of a bare rusqlite loop",
    ),
    Workload(
        "W9",
        "durable async, % of in-memory (issue 4)",
        "throughput",
        "% of in-memory",
        True,
        ">= 80%",
    ),
    Workload(
        "W10",
        "cold `mpm-events hook` process (issue 12)",
        "wall",
        "ms",
        False,
        "<= 60 ms",
    ),
    Workload(
        "W11",
        "shared log, 4 publisher processes x 2 names, batches of 1,000 (issue 12)",
        "throughput",
        "events/s",
        True,
        ">= 200k/s",
    ),
    Workload(
        "W12",
        "Redis Streams: publish_batch of 1,000, pipelined (issue 13)",
        "throughput",
        "events/s",
        True,
        ">= 200k/s",
    ),
    Workload(
        "W13",
        "paced 1,000/s, Python consumer + MetricsConsumer (issue 16)",
        "CPU added",
        "us/event",
        False,
        "<= 10 us/event, <= 1 context switch/event",
    ),
    Workload(
        "W1r",
        "W1 with one content rule on its consumer, % of W1 (issue 15)",
        "throughput",
        "% of W1",
        True,
        ">= 90%",
    ),
]

# W13's configurations: (rate, with MetricsConsumer) -> stat name prefix.
W13_CASES = [(1000.0, False), (1000.0, True), (100.0, False), (100.0, True)]


def w13_label(rate: float, metrics: bool) -> str:
    return f"{int(rate)}{'_metrics' if metrics else ''}"


def paced_round(impl: Any, seconds: float) -> dict[str, Any]:
    """W13, one round: per rate, the paced loop without a bus, then with the bus (one
    Python consumer; then with MetricsConsumer beside it), then without again; CPU and
    context switches per event over the mean of the two bare runs."""
    out: dict[str, Any] = {}
    for rate in sorted({r for r, _ in W13_CASES}, reverse=True):
        before = measure(wl.paced_stream, None, rate, seconds)
        if "error" in before:
            return before
        runs = {}
        for r, metrics in W13_CASES:
            if r == rate:
                runs[metrics] = measure(wl.paced_stream, impl, rate, seconds, metrics)
                if "error" in runs[metrics]:
                    return runs[metrics]
        # NOTE: the bare loop once before and once after the bus's runs, averaged,
        # so a drift of the machine across the rate's runs cancels out.
        after = measure(wl.paced_stream, None, rate, seconds)
        if "error" in after:
            return after
        bare = {k: (before[k] + after[k]) / 2 for k in ("cpu_s", "context_switches", "n_events")}
        out[f"bare_{int(rate)}"] = bare
        for r, metrics in W13_CASES:
            if r != rate:
                continue
            got = runs[metrics]
            n = got["n_events"]
            label = w13_label(rate, metrics)
            out[f"cpu_us_{label}"] = (got["cpu_s"] - bare["cpu_s"]) / n * 1e6
            out[f"cs_{label}"] = (got["context_switches"] - bare["context_switches"]) / n
            out[f"cs_raw_{label}"] = got["context_switches"] / n
    out["value"] = out["cpu_us_1000_metrics"]
    return out


def read_criterion() -> dict[str, Any]:
    """The criterion estimates ``make bench`` wrote just before this run (issue 16's
    anchors): ns per element of the engine and channel cases, and their age."""
    base = REPO / "target" / "criterion"
    cases = {
        "publish_and_deliver_1": "dispatch/publish_and_deliver/1",
        "publish_and_deliver_5": "dispatch/publish_and_deliver/5",
        "publish_many_2048": "dispatch/publish_many/2048",
        "channel_one_thread": "channel/unbounded_send_recv_one_thread",
        "channel_cross_thread": "channel/unbounded_send_recv_cross_thread",
        "sqlite_insert_group_sync_256": "sqlite/insert_group_sync/256",
    }
    per_element = {"publish_many_2048": 2048, "sqlite_insert_group_sync_256": 256}
    out: dict[str, Any] = {}
    for key, rel in cases.items():
        path = base / rel / "new" / "estimates.json"
        if not path.exists():
            # criterion names a "group/a/b" function "a_b" on disk
            continue
        est = json.loads(path.read_text())
        ns = est["median"]["point_estimate"] / per_element.get(key, 1)
        out[key] = {"ns_per_event": ns, "age_s": round(time.time() - path.stat().st_mtime)}
    return out


def percent_of(
    base: dict[str, Any], other: dict[str, Any], base_key: str, other_key: str
) -> dict[str, Any]:
    """``other``'s throughput as a percentage of ``base``'s (the first error, if any)."""
    for r in (base, other):
        if "error" in r:
            return r
    return {
        "value": 100.0 * other["value"] / base["value"],
        other_key: other["value"],
        base_key: base["value"],
    }


#: W1r's A-B-B-A blocks per round (see ``rule_ratio``).
W1R_BLOCKS = 3


def rule_ratio(impl: Any, n_events: int) -> dict[str, Any]:
    """W1r: W1 with one rule on its consumer as a percentage of W1.

    NOTE: measured in ``W1R_BLOCKS`` blocks of A-B-B-A (W1, W1r, W1r, W1), taken as the
    ratio of the means, so that a drift of the machine's speed within a block cancels
    out and one slow run weighs less; a single back-to-back pair swung 76-116% per
    round on this shared 2-core machine, where the instruction counts differ by 5%.

    Also, not the target: the same with 64 tool names in turn, so that no answer is
    remembered (``mixed_percent``, see ``workloads.W1R_MIXED_TOOLS``), once per round.
    """
    plain: list[dict[str, Any]] = []
    ruled: list[dict[str, Any]] = []
    for _ in range(W1R_BLOCKS):
        plain.append(measure(wl.hook_stream, impl, n_events, ["hook.**"]))
        ruled.append(measure(wl.hook_stream_with_rule, impl, n_events))
        ruled.append(measure(wl.hook_stream_with_rule, impl, n_events))
        plain.append(measure(wl.hook_stream, impl, n_events, ["hook.**"]))
    mixed = measure(wl.hook_stream_with_rule_mixed, impl, n_events)
    for r in plain + ruled:
        if "error" in r:
            return r
    base = {"value": statistics.fmean(r["value"] for r in plain)}
    other = {"value": statistics.fmean(r["value"] for r in ruled)}
    result = percent_of(base, other, "without_events_per_s", "with_rule_events_per_s")
    if "error" not in mixed:
        result["mixed_tools_events_per_s"] = mixed["value"]
        result["mixed_percent"] = 100.0 * mixed["value"] / base["value"]
    return result


def durable_ratio(impl: Any, n_events: int) -> dict[str, Any]:
    """W9: durable "async" throughput as a percentage of the in-memory bus, same workload."""
    memory = measure(wl.durable_stream, impl, n_events, 256, None)
    durable = measure(wl.durable_stream, impl, n_events, 256, "async")
    return percent_of(memory, durable, "in_memory_events_per_s", "async_events_per_s")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- measuring ---------------------------------------------------------------------------


def measure(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Run one async measurement in a fresh event loop; errors become results, not crashes.

    A measurement that hangs (say a publish that never returns) becomes an error after
    ``MEASURE_TIMEOUT_S`` so the suite still finishes within its budget.
    """
    gc.collect()
    try:
        return asyncio.run(asyncio.wait_for(fn(*args, **kwargs), MEASURE_TIMEOUT_S))
    except TimeoutError:
        return {"error": f"timed out after {MEASURE_TIMEOUT_S:.0f} s"}
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}


def calibrate(run: Callable[[int], dict[str, Any]], seconds: float, n_max: int) -> int:
    """Pick an event count that takes about ``seconds``: the same rule for both buses."""
    n = 5
    while True:
        result = run(n)
        if "error" in result:
            return n
        if result["seconds"] >= seconds / 10 or n >= n_max:
            break
        n = min(n * 10, n_max)
    return max(5, min(n_max, int(result["value"] * seconds)))


def memprobe(name: str, n: int, mode: str) -> dict[str, Any]:
    cmd = [sys.executable, str(HERE / "memprobe.py"), name, str(n), mode]
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=MEASURE_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {MEASURE_TIMEOUT_S:.0f} s"}
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["memprobe failed"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


IMPORT_SNIPPETS = {
    "bare": "pass",
    impls.ORIGINAL: (
        f"import sys; sys.path.insert(0, {str(impls.TESTS)!r}); "
        "from helpers import original_loader; original_loader.load_original()"
    ),
    impls.OURS: "import mpm_events",
}


def import_times(names: list[str], runs: int) -> dict[str, dict[str, Any]]:
    """W7: wall time of ``python -c <import>`` minus a paired ``python -c pass``, interleaved."""
    added: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(runs):
        times = {}
        for key in ["bare", *names]:
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-c", IMPORT_SNIPPETS[key]], check=True)
            times[key] = time.perf_counter() - t0
        for name in names:
            added[name].append((times[name] - times["bare"]) * 1000)
    return {name: {"samples": values} for name, values in added.items()}


def hook_process_times(ours_runs: int, original_runs: int) -> dict[str, Any]:
    """W10 in a process of its own (``benches/hookprobe.py``): cold hook processes,
    ours and claude-mpm's real handler, alternately."""
    cmd = [sys.executable, str(HERE / "hookprobe.py"), str(ours_runs), str(original_runs)]
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=MEASURE_TIMEOUT_S * 3, check=False
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {MEASURE_TIMEOUT_S * 3:.0f} s"}
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["hookprobe failed"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def logprobe(*args: str) -> dict[str, Any]:
    """``benches/logprobe.py`` in a process of its own: its JSON line, or ``error``."""
    cmd = [sys.executable, str(HERE / "logprobe.py"), *args]
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=MEASURE_TIMEOUT_S * 5, check=False
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {MEASURE_TIMEOUT_S * 5:.0f} s"}
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["logprobe failed"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def shared_log_runs(quick: bool) -> dict[str, Any]:
    """W11: 4 publisher processes and 2 consumer-name processes on one shared log,
    several modes."""
    return logprobe(*(["--quick"] if quick else []))


def shared_log_report(
    quick: bool, samples: dict[str, list[dict[str, Any]]], notes: dict[str, str]
) -> None:
    """W11: runs ``logprobe.py``; the table's value is the bus's batches of 1,000."""
    log("W11: the shared log across processes (4 publishers, 2 consumer names)")
    w11 = shared_log_runs(quick)
    if "error" in w11:
        samples[impls.OURS] = [{"error": w11["error"]}]
    for run in w11.get("runs", []):
        via = run.get("via", "direct")
        label = (
            f"W11 {via} {run['mode']} {run.get('durability', 'sync')} batch {run.get('batch', 1)}"
        )
        if "error" in run:
            notes[label] = run["error"]
            continue
        notes[label] = (
            f"{run['events']} events: {run['end_to_end_events_per_s']:,.0f}/s end to end, "
            f"publish {run['publish_events_per_s']:,.0f}/s, publish-to-consume p50 "
            f"{run['p50_ms']:.1f} ms p99 {run['p99_ms']:.1f} ms, {run['duplicates']} dupes"
        )
        log(f"  {label}: {notes[label]}")
        if run["mode"] == "batch" and via == "bus":
            samples[impls.OURS] = [{"value": run["end_to_end_events_per_s"]}]


#: W12's targets beside publish_batch's: awaited publish p50, the drains, cold hooks.
W12_TARGETS = (
    "publish_p50_ms",
    "rust_sink_events_per_s",
    "python_consumer_events_per_s",
    "cold_hook_p50_ms",
)


def redis_log_runs(quick: bool) -> dict[str, Any]:
    """W12, on a private redis-server that ``logprobe.py --redis`` starts on a free
    port."""
    return logprobe("--redis", *(["--quick"] if quick else []))


def redis_log_report(
    quick: bool, samples: dict[str, list[dict[str, Any]]], notes: dict[str, str]
) -> None:
    """W12: the table's value is ``publish_batch`` (1,000 per batch, pipelined); the
    other targets and redis-benchmark's ceiling go to the notes."""
    log("W12: the bus on Redis Streams (private redis-server)")
    w12 = redis_log_runs(quick)
    if "error" in w12:
        samples[impls.OURS] = [{"error": w12["error"]}]
        notes["W12"] = w12["error"]
        return
    sample = {"value": w12["publish_batch_events_per_s"]}
    # NOTE: W12's other targets travel with the sample, for the verdict (report.py).
    for k in W12_TARGETS:
        if isinstance(w12.get(k), (int, float)):
            sample[k] = w12[k]
    samples[impls.OURS] = [sample]
    raw = w12.get("redis_benchmark", {})

    def rate(v: Any) -> str:
        return f"{v:,.0f}/s" if isinstance(v, (int, float)) else "-"

    def cold_hook(w: dict[str, Any]) -> str:
        if "cold_hook_error" in w:
            return f"failed ({w['cold_hook_error']})"
        if "cold_hook_p50_ms" not in w:
            return "-"
        return f"p50 {w['cold_hook_p50_ms']:.1f} ms ({w['cold_hook_runs']} processes)"

    notes["W12"] = (
        f"publish_batch of 1,000 ({w12['batches_in_flight']} in flight) "
        f"{rate(w12['publish_batch_events_per_s'])}; awaited publish p50 "
        f"{w12['publish_p50_ms']:.3f} ms p99 {w12['publish_p99_ms']:.3f} ms; one name, Rust "
        f"sink {rate(w12.get('rust_sink_events_per_s'))}, Python consumer "
        f"{rate(w12.get('python_consumer_events_per_s'))}; cold hook "
        f"{cold_hook(w12)}; redis-benchmark XADD "
        f"{rate(raw.get('xadd_per_s'))} (pipelined 16: {rate(raw.get('xadd_pipelined16_per_s'))}"
        f"{'; ' + raw['error'] if 'error' in raw else ''}); server {w12['redis_config']}"
    )
    log(f"  W12: {notes['W12']}")


def summary(samples: list[float]) -> dict[str, Any]:
    median = statistics.median(samples)
    lo, hi = min(samples), max(samples)
    return {
        "median": median,
        "min": lo,
        "max": hi,
        "spread_pct": (hi - lo) / 2 / abs(median) * 100 if median else None,
        "samples": samples,
    }


# --- the run -----------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": sys.version.split()[0],
        "python_impl": platform.python_implementation(),
        "platform": platform.platform(),
        "logical_cpus": os.cpu_count(),
        "loadavg_at_start": list(os.getloadavg()),
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                info["memory_gib"] = round(int(line.split()[1]) / 1024 / 1024, 1)
                break
    except OSError:
        pass
    return info


def run_suite(args: argparse.Namespace) -> dict[str, Any]:
    sizes = QUICK if args.quick else Sizes()
    rounds = args.rounds if args.rounds else (1 if args.quick else 5)
    only = {k.strip().upper() for k in args.only.split(",")} if args.only else None

    loaded = {name: impls.load(name) for name in impls.NAMES}
    for name, item in loaded.items():
        state = f"version {item.version}" if item.available else f"NOT AVAILABLE ({item.reason})"
        log(f"{name}: {state}")
    live = [name for name in impls.NAMES if loaded[name].available]

    def selected(key: str) -> bool:
        return only is None or key.upper() in only

    samples: dict[str, dict[str, list[dict[str, Any]]]] = {
        w.key: {name: [] for name in impls.NAMES} for w in WORKLOADS
    }
    notes: dict[str, str] = {}

    floor = measure(wl.await_floor, sizes.floor_awaits)
    log(f"floor: awaiting a trivial coroutine costs {floor.get('await_noop_ns', 0):.0f} ns")

    w3_n: dict[str, int] = {}
    if selected("W3"):
        for name in live:
            w3 = partial(measure, wl.hook_stream, loaded[name].impl, patterns=wl.FANOUT_PATTERNS)
            w3_n[name] = calibrate(partial(w3, idle=1000), sizes.w3_seconds, sizes.w3_max)
            log(f"W3 calibrated: {name} runs {w3_n[name]} events per round")

    for peer in peers.PEERS:
        why = peers.available(peer)
        state = f"version {peers.version(peer)}" if why is None else f"NOT AVAILABLE ({why})"
        log(f"{peer}: {state}")
    live_peers = [p for p in peers.PEERS if peers.available(p) is None]
    peer_sizes = {
        peers.FLOOR: (sizes.w1, sizes.w2),
        peers.PYEE: (sizes.pyee_w1, sizes.pyee_w2),
        peers.BUBUS: (sizes.bubus_w1, sizes.bubus_w2),
    }

    for r in range(rounds):
        everyone = live + live_peers
        order = everyone if r % 2 == 0 else list(reversed(everyone))
        log(f"round {r + 1}/{rounds} (order: {', '.join(order)})")
        for name in order:
            if name in live_peers:
                stream = peers.STREAMS[name]
                n1, n2 = peer_sizes[name]
                for key, fn in (
                    ("W1", partial(measure, stream, n1, ["hook.**"])),
                    ("W1d", partial(measure, stream, n1, ["hook.**"], True)),
                    ("W2", partial(measure, stream, n2, wl.FANOUT_PATTERNS)),
                ):
                    if not selected(key):
                        continue
                    result = fn()
                    result["round"] = r
                    samples[key].setdefault(name, []).append(result)
                    shown = result.get("error") or f"{result['value']:,.1f}"
                    log(f"  {key} {name}: {shown}")
                continue
            impl = loaded[name].impl
            todo: list[tuple[str, Callable[[], dict[str, Any]]]] = [
                ("W1", partial(measure, wl.hook_stream, impl, sizes.w1, ["hook.**"])),
                (
                    "W1d",
                    partial(measure, wl.hook_stream, impl, sizes.w1, ["hook.**"], read_data=True),
                ),
                ("W2", partial(measure, wl.hook_stream, impl, sizes.w2, wl.FANOUT_PATTERNS)),
            ]
            if name in w3_n:
                todo.append(
                    (
                        "W3",
                        partial(
                            measure, wl.hook_stream, impl, w3_n[name], wl.FANOUT_PATTERNS, 1000
                        ),
                    )
                )
            todo += [
                ("W4", partial(measure, wl.publish_latency, impl, sizes.w4)),
                ("W5", partial(memprobe, name, sizes.w5, "rss")),
            ]
            # W6 needs publish_batch/join and a Rust-native consumer: ours only.
            if name == impls.OURS and hasattr(impl, "MetricsConsumer"):
                todo.append(("W6", partial(measure, wl.batch_to_metrics, impl, sizes.w6)))
            # W8/W9 measure our durable store (issue 4); the original has none.
            if name == impls.OURS:
                todo.append(
                    ("W8", partial(measure, wl.durable_stream, impl, sizes.w8, 256, "sync"))
                )
                todo.append(("W9", partial(durable_ratio, impl, sizes.w8)))
                # W1r: content rules (issue 15); the original has none.
                todo.append(("W1r", partial(rule_ratio, impl, sizes.w1)))
            for key, fn in todo:
                if not selected(key):
                    continue
                result = fn()
                result["round"] = r
                samples[key][name].append(result)
                shown = result.get("error") or f"{result['value']:,.1f}"
                log(f"  {key} {name}: {shown}")

    ours_impl = loaded[impls.OURS].impl
    if selected("W13") and ours_impl is not None and hasattr(ours_impl, "MetricsConsumer"):
        w13_rounds = min(rounds, sizes.w13_rounds)
        log(f"W13: paced streams, {sizes.w13_seconds:g} s each, {w13_rounds} round(s)")
        for _ in range(w13_rounds):
            result = paced_round(ours_impl, sizes.w13_seconds)
            samples["W13"][impls.OURS].append(result)
            shown = result.get("error") or ", ".join(
                f"{w13_label(r, m)}: {result[f'cpu_us_{w13_label(r, m)}']:.1f} us "
                f"{result[f'cs_{w13_label(r, m)}']:.2f} cs"
                for r, m in W13_CASES
            )
            log(f"  W13 ours: {shown}")

    criterion = read_criterion()
    if criterion:
        for key, got in criterion.items():
            ns, age = got["ns_per_event"], got["age_s"]
            log(f"criterion {key}: {ns:.1f} ns/event (written {age} s ago)")

    if selected("W5"):
        for name in live:
            result = memprobe(name, sizes.w5, "tracemalloc")
            notes[f"W5 tracemalloc {name}"] = result.get("error") or (
                f"{result['tracemalloc_bytes_per_event']:,.0f} B/event on the Python heap"
            )
            samples["W5"].setdefault(f"{name}_tracemalloc", []).append(result)

    if selected("W7"):
        log(f"W7: {sizes.w7_runs} interleaved interpreter starts per implementation")
        for name, data in import_times(live, sizes.w7_runs).items():
            samples["W7"][name] = [{"value": v} for v in data["samples"]]

    if selected("W10"):
        log(
            f"W10: {sizes.w10_runs} cold `mpm-events hook` processes, "
            f"{sizes.w10_original_runs} of claude-mpm's hook handler"
        )
        w10 = hook_process_times(sizes.w10_runs, sizes.w10_original_runs)
        for name, key in ((impls.OURS, "ours"), (impls.ORIGINAL, "original")):
            got = w10.get(key) if "error" not in w10 else w10
            if got is None:
                continue
            if "error" in got:
                samples["W10"][name] = [{"error": got["error"]}]
            else:
                samples["W10"][name] = [{"value": v} for v in got["samples_ms"]]
                log(f"  W10 {name}: median {got['median_ms']:.1f} ms")

    if selected("W11") and impls.OURS in live:
        shared_log_report(bool(args.quick), samples["W11"], notes)
    if selected("W12") and impls.OURS in live:
        redis_log_report(bool(args.quick), samples["W12"], notes)

    charts: dict[str, Any] = {}
    if not args.no_charts and (only is None or "CHARTS" in only):
        charts = run_charts(loaded, live, sizes)

    workloads_out: dict[str, Any] = {}
    for w in WORKLOADS:
        entry: dict[str, Any] = {
            "title": w.title,
            "metric": w.metric,
            "unit": w.unit,
            "higher_is_better": w.higher_is_better,
            "target": w.target,
        }
        for name in (*impls.NAMES, *peers.PEERS):
            if name in peers.PEERS and w.key not in ("W1", "W1d", "W2"):
                continue
            runs = samples[w.key].get(name, [])
            errors = [s["error"] for s in runs if "error" in s]
            good = [s for s in runs if "error" not in s]
            if good:
                entry[name] = summary([s["value"] for s in good])
                entry[name]["runs"] = good
            elif errors:
                entry[name] = {"error": errors[0]}
            else:
                entry[name] = None
            if errors and good:
                entry[name]["errors"] = errors
        if w.key == "W5":
            for name in impls.NAMES:
                traced = samples[w.key].get(f"{name}_tracemalloc")
                if traced and "error" not in traced[0]:
                    entry[f"{name}_tracemalloc_bytes_per_event"] = traced[0][
                        "tracemalloc_bytes_per_event"
                    ]
        if w.key == "W4":
            for name in impls.NAMES:
                if entry[name] and "runs" in entry[name]:
                    for stat in ("p50_us", "mean_us"):
                        entry[name][stat] = summary([s[stat] for s in entry[name]["runs"]])
        if w.key == "W12":
            u = entry[impls.OURS]
            if u and "runs" in u:
                for k in W12_TARGETS:
                    got = [s[k] for s in u["runs"] if k in s]
                    if got:
                        u[k] = summary(got)
        if w.key == "W13":
            u = entry[impls.OURS]
            if u and "runs" in u:
                for rate, metrics in W13_CASES:
                    for stat in ("cpu_us", "cs", "cs_raw"):
                        k = f"{stat}_{w13_label(rate, metrics)}"
                        u[k] = summary([s[k] for s in u["runs"]])
        o, u = entry[impls.ORIGINAL], entry[impls.OURS]
        if o and u and "median" in o and "median" in u and o["median"]:
            entry["ratio"] = u["median"] / o["median"]
        # Per-round ratios against the floor and the peers (measured in the same round).
        for peer in peers.PEERS:
            p = entry.get(peer)
            if not (p and u and "runs" in p and "runs" in u):
                continue
            by_round = {s["round"]: s["value"] for s in p["runs"]}
            ratios = [
                s["value"] / by_round[s["round"]] for s in u["runs"] if s["round"] in by_round
            ]
            if ratios:
                entry[f"ratio_{peer}"] = statistics.median(ratios)
        workloads_out[w.key] = entry
    anchors = anchor_ratios(workloads_out, criterion)

    return {
        "schema": 1,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "quick": bool(args.quick),
        "rounds": rounds,
        "sizes": sizes.__dict__,
        "machine": machine(),
        "implementations": {
            name: {
                "available": item.available,
                "version": item.version,
                "reason": item.reason,
            }
            for name, item in loaded.items()
        },
        "floor": floor,
        "peers": {
            p: {"available": peers.available(p) is None, "version": peers.version(p)}
            for p in peers.PEERS
        },
        "criterion": criterion,
        "anchors": anchors,
        "workloads": workloads_out,
        "targets": report.check_targets(workloads_out, anchors),
        "charts": charts,
        "notes": notes,
    }


def anchor_ratios(workloads: dict[str, Any], criterion: dict[str, Any]) -> dict[str, Any]:
    """Issue 16's bounds: the engine against the channel anchor (criterion, same make
    bench run), W6 against the engine's own rate for the same batch slice, W8 against
    a bare rusqlite loop with the same group size and fsync policy."""
    out: dict[str, Any] = {}

    def ns(key: str) -> float | None:
        got = criterion.get(key)
        return got["ns_per_event"] if got else None

    engine, one, cross = (
        ns("publish_and_deliver_1"),
        ns("channel_one_thread"),
        ns("channel_cross_thread"),
    )
    if engine and cross:
        out["engine_over_channel_cross_thread"] = engine / cross
    if engine and one:
        out["engine_over_channel_one_thread"] = engine / one
    many = ns("publish_many_2048")
    w6 = _median(workloads.get("W6", {}).get(impls.OURS))
    if many and w6:
        out["w6_pct_of_engine_batch"] = 100 * w6 / (1e9 / many)
    sq = ns("sqlite_insert_group_sync_256")
    w8 = _median(workloads.get("W8", {}).get(impls.OURS))
    if sq and w8:
        out["w8_pct_of_bare_sqlite"] = 100 * w8 / (1e9 / sq)
    return out


def _median(entry: dict[str, Any] | None) -> float | None:
    return float(entry["median"]) if entry and "median" in entry else None


def run_charts(loaded: dict[str, impls.Loaded], live: list[str], sizes: Sizes) -> dict[str, Any]:
    """Throughput vs number of subscriptions and vs number of consumers, per implementation."""

    def series(make: Callable[[Any, int, int], Any], points: list[int], label: str) -> dict:
        out: dict[str, Any] = {"x": points}
        for name in impls.NAMES:
            out[name] = [None] * len(points) if name in live else None
        for i, x in enumerate(points):
            counts = {}
            for name in live:
                impl = loaded[name].impl
                counts[name] = calibrate(
                    lambda n, impl=impl, x=x: measure(make, impl, n, x),
                    sizes.chart_seconds,
                    sizes.chart_max,
                )
            values: dict[str, list[float]] = {name: [] for name in live}
            for r in range(sizes.chart_rounds):
                for name in live if r % 2 == 0 else reversed(live):
                    impl = loaded[name].impl
                    result = measure(make, impl, counts[name], x)
                    if "error" not in result:
                        values[name].append(result["value"])
            for name in live:
                if values[name]:
                    out[name][i] = statistics.median(values[name])
            shown = ", ".join(
                f"{name} {out[name][i]:,.0f}/s" if out[name][i] else f"{name} failed"
                for name in live
            )
            log(f"  chart {label}={x}: {shown}")
        return out

    log("chart: throughput vs subscriptions")
    subs = series(
        lambda impl, n, x: wl.hook_stream(impl, n, ["hook.**"], idle=x - 1),
        SUBSCRIPTION_POINTS,
        "subscriptions",
    )
    log("chart: throughput vs consumers")
    cons = series(
        lambda impl, n, x: wl.hook_stream(
            impl, n, [wl.MATCHING_PATTERNS[i % len(wl.MATCHING_PATTERNS)] for i in range(x)]
        ),
        CONSUMER_POINTS,
        "consumers",
    )
    return {"subscriptions": subs, "consumers": cons}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=0, help="rounds (default 5, quick 1)")
    parser.add_argument("--quick", action="store_true", help="fast smoke run, small sizes")
    parser.add_argument("--only", default="", help="comma list: W1, W1d, W1r, W2..W13, CHARTS")
    parser.add_argument("--no-charts", action="store_true", help="skip the two chart sweeps")
    parser.add_argument("--no-docs", action="store_true", help="do not write docs/benchmarks.md")
    parser.add_argument("--json", type=Path, default=RESULTS, help="results file")
    args = parser.parse_args()

    started = time.perf_counter()
    results = run_suite(args)
    results["elapsed_s"] = round(time.perf_counter() - started, 1)

    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=1) + "\n")
    print(report.table(results))
    if not args.no_docs:
        report.write_docs(results, DOCS, IMG)
        log(f"wrote {DOCS.relative_to(REPO)} and charts under {IMG.relative_to(REPO)}")
    log(f"wrote {args.json} ({results['elapsed_s']} s)")


if __name__ == "__main__":
    main()
