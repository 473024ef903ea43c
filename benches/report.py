"""Turn a results dict (``benches/results/latest.json``) into a table, targets and docs."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

ORIGINAL, OURS = "original", "ours"
FLOOR, PYEE, BUBUS = "floor", "pyee", "bubus"


def fmt(value: float | None, unit: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if unit in ("events/s", "B/event"):
        return f"{value:,.0f}"
    if unit == "us":
        return f"{value:,.2f}"
    return f"{value:,.1f}"


def cell(entry: dict[str, Any] | None, unit: str) -> str:
    if entry is None:
        return "n/a"
    if "error" in entry and "median" not in entry:
        return "error"
    spread = entry.get("spread_pct")
    text = fmt(entry["median"], unit)
    return f"{text} ±{spread:.0f}%" if spread is not None else text


def ratio_text(entry: dict[str, Any]) -> str:
    ratio = entry.get("ratio")
    if ratio is None:
        return "-"
    return f"{ratio:,.1f}x" if ratio >= 10 else f"{ratio:,.3g}x"


def _median(entry: dict[str, Any] | None) -> float | None:
    if entry and "median" in entry:
        return float(entry["median"])
    return None


def check_targets(
    workloads: dict[str, Any], anchors: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Whether each of issue 5's (and 16's) targets is met; ``None`` when not measured."""
    out: dict[str, Any] = {}
    anchors = anchors or {}

    def ours(key: str) -> float | None:
        return _median(workloads.get(key, {}).get(OURS))

    def ratio(key: str) -> float | None:
        return workloads.get(key, {}).get("ratio")

    def verdict(key: str, ok: bool | None, detail: str) -> None:
        out[key] = {"target": workloads[key]["target"], "met": ok, "detail": detail}

    def floor_pct(key: str) -> float | None:
        r = workloads.get(key, {}).get(f"ratio_{FLOOR}")
        return None if r is None else 100 * r

    for key, need in (("W1", 60), ("W2", 50)):
        r, f = ratio(key), floor_pct(key)
        parts, oks = [], []
        if r is not None:
            parts.append(f"ratio {r:.1f}x")
            oks.append(r >= 10)
        if f is not None:
            parts.append(f"{f:.0f}% of floor (>= {need}%)")
            oks.append(f >= need)
        if key == "W1":
            p = workloads.get(key, {}).get(f"ratio_{PYEE}")
            if p is not None:
                parts.append(f"{p:.1f}x pyee (>= 10x)")
                oks.append(p >= 10)
        verdict(key, all(oks) if oks else None, ", ".join(parts) or "not measured")
    if "W1d" in workloads:
        f = floor_pct("W1d")
        verdict("W1d", None if f is None else f >= 50, f"{f:.0f}% of floor" if f else "-")
    r3, w3, w2 = ratio("W3"), ours("W3"), ours("W2")
    if r3 is None or w3 is None or w2 is None:
        verdict("W3", None, "not measured")
    else:
        verdict("W3", r3 >= 1000 and w3 >= 0.8 * w2, f"ratio {r3:,.0f}x, W3/W2 {w3 / w2:.2f}")
    p99 = ours("W4")
    verdict("W4", None if p99 is None else p99 < 20, f"p99 {p99:.2f} us" if p99 else "-")
    r5 = ratio("W5")
    verdict("W5", None if r5 is None else r5 <= 1 / 3, f"ratio {r5:.2f}" if r5 else "-")

    def bounded(key: str, anchor: str, need: float, bound: str, old_floor: float) -> None:
        """A target restated against what bounds it (issue 16), when that was measured."""
        v, pct = ours(key), anchors.get(anchor)
        if pct is not None and v is not None:
            verdict(key, pct >= need, f"{v:,.0f} events/s, {pct:.0f}% of {bound} (>= {need}%)")
        else:
            verdict(key, None if v is None else v >= old_floor, f"{v:,.0f} events/s" if v else "-")

    bounded("W6", "w6_pct_of_engine_batch", 80, "the engine's criterion rate", 2e6)
    w7 = ours("W7")
    verdict("W7", None if w7 is None else w7 <= 30, f"+{w7:.1f} ms" if w7 is not None else "-")
    if "W8" in workloads:
        bounded("W8", "w8_pct_of_bare_sqlite", 50, "a bare rusqlite loop", 1e5)
    if "W9" in workloads:
        w9 = ours("W9")
        verdict("W9", None if w9 is None else w9 >= 80, f"{w9:.0f}% of in-memory" if w9 else "-")
    if "W10" in workloads:
        w10 = ours("W10")
        verdict("W10", None if w10 is None else w10 <= 60, f"{w10:.1f} ms" if w10 else "-")
    if "W11" in workloads:
        w11 = ours("W11")
        verdict("W11", None if w11 is None else w11 >= 2e5, f"{w11:,.0f} events/s" if w11 else "-")
    if "W12" in workloads:
        w12 = ours("W12")
        u12 = workloads["W12"].get(OURS) or {}

        def w12_stat(k: str) -> float | None:
            v = u12.get(k)
            return v["median"] if isinstance(v, dict) and "median" in v else None

        # NOTE: every W12 target of issue 13, not only the table's publish_batch.
        checks = [
            ("publish_batch", w12, lambda v: v >= 2e5, "{:,.0f} events/s"),
            ("publish p50", w12_stat("publish_p50_ms"), lambda v: v <= 0.3, "{:.3f} ms"),
            ("Rust sink", w12_stat("rust_sink_events_per_s"), lambda v: v >= 1e5, "{:,.0f}/s"),
            (
                "Python consumer",
                w12_stat("python_consumer_events_per_s"),
                lambda v: v >= 5e4,
                "{:,.0f}/s",
            ),
            ("cold hook p50", w12_stat("cold_hook_p50_ms"), lambda v: v <= 60, "{:.1f} ms"),
        ]
        measured = [(n, v, ok, f) for n, v, ok, f in checks if v is not None]
        verdict(
            "W12",
            None
            if w12 is None
            else len(measured) == len(checks) and all(ok(v) for _, v, ok, _ in measured),
            "; ".join(f"{n} {f.format(v)}" for n, v, _, f in measured) or "-",
        )
    w13 = workloads.get("W13", {}).get(OURS)
    if w13 and "cpu_us_1000_metrics" in w13:
        cpu = [w13[f"cpu_us_{k}"]["median"] for k in ("1000_metrics", "100_metrics")]
        cs = [w13[f"cs_{k}"]["median"] for k in ("1000_metrics", "100_metrics")]
        verdict(
            "W13",
            max(cpu) <= 10 and max(cs) <= 1,
            f"1,000/s: {cpu[0]:.1f} us, {cs[0]:.2f} cs; 100/s: {cpu[1]:.1f} us, {cs[1]:.2f} cs "
            "per event over the bare paced loop",
        )
    elif "W13" in workloads:
        verdict("W13", None, "not measured")
    e = anchors.get("engine_over_channel_cross_thread")
    if e is not None:
        out["engine"] = {
            "target": "dispatch/publish_and_deliver/1 <= 2x a cross-thread tokio channel",
            "met": e <= 2,
            "detail": f"{e:.2f}x the cross-thread channel, "
            f"{anchors.get('engine_over_channel_one_thread', float('nan')):.1f}x one thread",
        }
    if "W1r" in workloads:
        w1r = ours("W1r")
        verdict("W1r", None if w1r is None else w1r >= 90, f"{w1r:.0f}% of W1" if w1r else "-")
    return out


def _peer_ratio(entry: dict[str, Any], peer: str) -> str:
    r = entry.get(f"ratio_{peer}")
    if r is None:
        return "-"
    if peer == FLOOR:
        return f"{100 * r:.0f}%"
    return f"{r:,.1f}x" if r >= 10 else f"{r:,.3g}x"


W13_ROWS = [
    ("cpu_us_1000", "CPU added, 1,000/s, Python consumer", "us/event"),
    ("cpu_us_1000_metrics", "CPU added, 1,000/s, + MetricsConsumer", "us/event"),
    ("cpu_us_100", "CPU added, 100/s, Python consumer", "us/event"),
    ("cpu_us_100_metrics", "CPU added, 100/s, + MetricsConsumer", "us/event"),
    ("cs_1000", "context switches added, 1,000/s", "per event"),
    ("cs_1000_metrics", "context switches added, 1,000/s, + Metrics", "per event"),
    ("cs_100", "context switches added, 100/s", "per event"),
    ("cs_100_metrics", "context switches added, 100/s, + Metrics", "per event"),
]


def rows(results: dict[str, Any]) -> list[list[str]]:
    targets = results.get("targets", {})
    out = []
    for key, entry in results["workloads"].items():
        if entry.get(ORIGINAL) is None and entry.get(OURS) is None:
            continue
        unit = entry["unit"]
        met = targets.get(key, {}).get("met")
        if key == "W13":
            u = entry.get(OURS) or {}
            for stat, label, unit13 in W13_ROWS:
                if stat not in u:
                    continue
                v = u[stat]
                text = f"{v['median']:,.2f} ±{v['spread_pct'] or 0:.0f}%"
                out.append(
                    [key, entry["title"], f"{label} ({unit13})", "n/a", text, "-"]
                    + ["-"] * 6
                    + [entry["target"], {True: "yes", False: "NO", None: "-"}[met]]
                )
            if "error" in u:
                out.append(
                    [key, entry["title"], "CPU added", "n/a", "error", "-"]
                    + ["-"] * 6
                    + [entry["target"], "-"]
                )
            continue
        out.append(
            [
                key,
                entry["title"],
                f"{entry['metric']} ({unit})",
                cell(entry.get(ORIGINAL), unit),
                cell(entry.get(OURS), unit),
                ratio_text(entry),
                cell(entry.get(FLOOR), unit) if FLOOR in entry else "-",
                _peer_ratio(entry, FLOOR),
                cell(entry.get(PYEE), unit) if PYEE in entry else "-",
                _peer_ratio(entry, PYEE),
                cell(entry.get(BUBUS), unit) if BUBUS in entry else "-",
                _peer_ratio(entry, BUBUS),
                entry["target"],
                {True: "yes", False: "NO", None: "-"}[met],
            ]
        )
        if key == "W4":
            for stat, label, target in (("p50_us", "p50", "-"), ("mean_us", "mean", "< 1 ms")):
                o = (entry.get(ORIGINAL) or {}).get(stat)
                u = (entry.get(OURS) or {}).get(stat)
                if not (o or u):
                    continue
                r = u["median"] / o["median"] if o and u and o["median"] else None
                ratio = f"{r:.3g}x" if r else "-"
                row = [key, entry["title"], f"{label} ({unit})", cell(o, unit), cell(u, unit)]
                out.append([*row, ratio, *["-"] * 6, target, "-"])
    return out


HEADER = [
    "",
    "workload",
    "metric",
    "original",
    "ours",
    "ours/original",
    "floor",
    "ours % of floor",
    "pyee",
    "ours/pyee",
    "bubus",
    "ours/bubus",
    "target",
    "met",
]


def table(results: dict[str, Any]) -> str:
    body = rows(results)
    widths = [max(len(r[i]) for r in [HEADER, *body]) for i in range(len(HEADER))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(HEADER, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in body]
    impl = results["implementations"]
    if not impl[OURS]["available"]:
        lines.append(f"ours: NOT AVAILABLE ({impl[OURS]['reason']}); only the original ran")
    lines += anchor_lines(results)
    floor = results.get("floor", {})
    if "await_noop_ns" in floor:
        lines.append(
            f"empty await: {floor['await_noop_ns']:.0f} ns "
            f"({floor['max_events_per_s_one_consumer']:,.0f}/s); not the floor of a bus, "
            "which is the floor column"
        )
    for note in results.get("notes", {}).items():
        lines.append(f"{note[0]}: {note[1]}")
    return "\n".join(lines)


def anchor_lines(results: dict[str, Any]) -> list[str]:
    """Issue 16's bounds, one line each: the engine against a tokio channel, W6 and W8
    against what bounds them (criterion, same ``make bench`` run)."""
    crit = results.get("criterion") or {}
    a = results.get("anchors") or {}
    out = []

    def ns(key: str) -> str:
        got = crit.get(key)
        return f"{got['ns_per_event']:,.0f} ns" if got else "-"

    if crit:
        out.append(
            f"engine (criterion): publish_and_deliver/1 {ns('publish_and_deliver_1')}/event, "
            f"publish_many/2048 {ns('publish_many_2048')}/event; tokio unbounded channel "
            f"{ns('channel_one_thread')} one thread, {ns('channel_cross_thread')} cross-thread"
        )
    if "engine_over_channel_cross_thread" in a:
        out.append(
            f"engine / cross-thread channel: {a['engine_over_channel_cross_thread']:.2f}x "
            "(target <= 2x)"
        )
    if "w6_pct_of_engine_batch" in a:
        out.append(f"W6: {a['w6_pct_of_engine_batch']:.0f}% of publish_many/2048 (>= 80%)")
    if "w8_pct_of_bare_sqlite" in a:
        out.append(
            f"W8: {a['w8_pct_of_bare_sqlite']:.0f}% of a bare rusqlite loop, groups of 256, "
            f"synchronous=FULL ({ns('sqlite_insert_group_sync_256')}/row) (>= 50%)"
        )
    if not crit:
        out.append("criterion anchors: not found (run `cargo bench --bench engine` first)")
    return out


IMPLEMENTATIONS = (ORIGINAL, OURS, FLOOR, PYEE, BUBUS)


def bar_chart(results: dict[str, Any], img_dir: Path) -> tuple[str, str] | None:
    """Events/s per implementation for W1, W1d and W2 (grouped bars, log scale)."""
    import matplotlib.pyplot as plt

    keys = [k for k in ("W1", "W1d", "W2") if k in results["workloads"]]
    impls = [
        n for n in IMPLEMENTATIONS if any(_median(results["workloads"][k].get(n)) for k in keys)
    ]
    if not keys or not impls:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 4.2), dpi=110)
    width = 0.8 / len(impls)
    for j, name in enumerate(impls):
        xs, ys = [], []
        for i, k in enumerate(keys):
            v = _median(results["workloads"][k].get(name))
            if v:
                xs.append(i + (j - (len(impls) - 1) / 2) * width)
                ys.append(v)
        ax.bar(xs, ys, width, label=name)
    ax.set_xticks(range(len(keys)), keys)
    ax.set_yscale("log")
    ax.set_ylabel("events/s (published and fully delivered)")
    title = "Events/s per implementation (W1, W1d: 1 consumer; W2: 5 consumers)"
    ax.set_title(title, fontsize=10)
    ax.grid(True, axis="y", which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    file = "bench-implementations.png"
    fig.savefig(img_dir / file)
    plt.close(fig)
    return title, file


def charts(results: dict[str, Any], img_dir: Path) -> list[tuple[str, str]]:
    """Write the PNG charts; returns (title, file name) pairs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img_dir.mkdir(parents=True, exist_ok=True)
    made = []
    bars = bar_chart(results, img_dir)
    if bars:
        made.append(bars)
    data = results.get("charts") or {}
    specs = [
        (
            "subscriptions",
            "Throughput vs number of subscriptions (1 active consumer, rest idle wildcards)",
            "subscriptions",
            True,
        ),
        (
            "consumers",
            "Throughput vs number of consumers (each sees every event)",
            "consumers",
            False,
        ),
    ]
    for key, title, xlabel, logx in specs:
        series = data.get(key)
        if not series:
            continue
        fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
        for name, style in ((ORIGINAL, "o-"), (OURS, "s-")):
            ys = series.get(name)
            if not ys:
                continue
            pts = [(x, y) for x, y in zip(series["x"], ys, strict=True) if y]
            if pts:
                ax.plot(*zip(*pts, strict=True), style, label=name)
        if logx:
            ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("events/s (published and fully delivered)")
        ax.set_title(title, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        fig.tight_layout()
        file = f"bench-{key}.png"
        fig.savefig(img_dir / file)
        plt.close(fig)
        made.append((title, file))
    return made


def write_docs(results: dict[str, Any], path: Path, img_dir: Path) -> None:
    m = results["machine"]
    impl = results["implementations"]
    made = charts(results, img_dir)
    md = [
        "# Benchmarks",
        "",
        "<!-- Generated by `make bench` (benches/run.py); do not edit by hand. -->",
        "",
    ]
    if results.get("quick"):
        md += ["> **Quick smoke run** (`--quick`): small sizes, one round. Not representative.", ""]
    if not impl[OURS]["available"]:
        md += [f"> **ours was not available** ({impl[OURS]['reason']}): only the original ran.", ""]
    md += [
        f"Run {results['created']}, {results['rounds']} round(s), the original and ours "
        f"alternately in the same process; median, ± half the min-max range.",
        "",
        f"- Machine: {m.get('cpu', '?')}, {m.get('logical_cpus')} logical CPUs, "
        f"{m.get('memory_gib', '?')} GiB, {m.get('platform')}",
        f"- Load average at start: {', '.join(f'{x:.2f}' for x in m['loadavg_at_start'])}",
        f"- Python {m['python']} ({m['python_impl']})",
        f"- original: claude-mpm {impl[ORIGINAL]['version']} (`claude_mpm.services.events`); "
        f"ours: mpm-events {impl[OURS]['version'] or '-'}",
        "- peers: "
        + ", ".join(
            f"{p} {v.get('version') or ''}".strip()
            + ("" if v.get("available") else " (not available)")
            for p, v in (results.get("peers") or {}).items()
        ),
        "",
        "| " + " | ".join(HEADER[1:]) + " |",
        "|" + "---|" * (len(HEADER) - 1),
    ]
    for r in rows(results):
        md.append(f"| {r[0]} {r[1]} | " + " | ".join(r[2:]) + " |")
    verdicts = results.get("targets", {})
    if any(v["met"] is not None for v in verdicts.values()):
        md += ["", "Targets (issues 5 and 16):", ""]
        for key, v in verdicts.items():
            state = {True: "met", False: "**not met**", None: "not measured"}[v["met"]]
            md.append(f"- {key} {v['target']}: {state} ({v['detail']})")
    md += ["", "Bounds (issue 16, same `make bench` run):", ""]
    md += [f"- {line}" for line in anchor_lines(results)]
    floor = results.get("floor", {})
    if "await_noop_ns" in floor:
        md += [
            "",
            "The floor column is no bus at all: a plain Python loop that awaits a producer "
            "function building the same event (a dict holding the same payload dict) and "
            "then awaits the consumers' coroutines directly. It is the floor of any "
            "in-process bus that delivers a Python event to a Python coroutine. An empty "
            f"`await` costs {floor['await_noop_ns']:.0f} ns here "
            f"({floor['max_events_per_s_one_consumer']:,.0f}/s), which no bus can approach "
            "and the floor already pays. "
            f"`perf_counter_ns()` itself costs {floor['perf_counter_ns_overhead_ns']:.0f} ns "
            f"(included in every W4 sample). Ratios to the floor and to pyee are the median "
            "of the per-round ratios (each round runs them back to back).",
        ]
    w5 = results["workloads"].get("W5", {})
    traced = [
        f"{name} {w5[f'{name}_tracemalloc_bytes_per_event']:,.0f} B/event"
        for name in (ORIGINAL, OURS)
        if w5.get(f"{name}_tracemalloc_bytes_per_event") is not None
    ]
    if traced:
        md += [
            "",
            "W5 on the Python heap alone (tracemalloc, which does not see native "
            f"allocations): {', '.join(traced)}.",
        ]
    md += shared_log_notes(results.get("notes", {}))
    for title, file in made:
        md += ["", f"![{title}](img/{file})"]
    md += ["", METHOD]
    # NOTE: the A/B record of performance changes is kept by hand (it comes from
    # runs of two builds side by side, not from this suite's single build).
    history = Path(__file__).with_name("ab-history.md")
    if history.exists():
        md += [history.read_text().rstrip("\n")]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(md) + "\n")


def shared_log_notes(notes: dict[str, str]) -> list[str]:
    """The W11 and W12 runs' details (every mode, latency, the Redis ceiling)."""
    mine = [(k, v) for k, v in notes.items() if k.startswith(("W11", "W12"))]
    if not mine:
        return []
    return ["", "Shared log (W11: SQLite, 4 publisher processes x 2 names; W12: Redis):", ""] + [
        f"- {k}: {v}" for k, v in mine
    ]


METHOD = """## Method

Every workload is one function in `benches/workloads.py` that receives an implementation
object (the original's or ours) and uses only the shared API, so both run the same code.

- **W1**: `HookEventProducer(bus).publish_tool_use(...)` 200,000 times into one consumer on
  `hook.**`, timed from the first publish until the consumer has counted every event.
- **W1d**: W1 with a consumer that reads `event.data["tool"]` (as real consumers do).
- **floor, pyee, bubus** (issue 16, W1/W1d/W2, in the same rounds, alternating): the
  floor is a plain loop awaiting a producer function that builds the event dict and then
  each consumer's coroutine (`benches/peers.py`); pyee is
  `pyee.asyncio.AsyncIOEventEmitter` with one async handler per consumer (it makes a Task
  per call; the publisher yields every 100 events); bubus is `bubus.EventBus` with
  `max_history_size=None` (its default refuses more than 100 pending events), one
  handler per consumer, a `BaseEvent` subclass per tool use. pyee runs 50,000 (W2:
  20,000) events a round and bubus 500 (200), so rates, not totals, compare.
- **W13** (issue 16): `publish_tool_use` paced by the event loop at 1,000 and 100
  events/s for 5 s into one Python consumer, then with `MetricsConsumer` beside it; the
  process CPU time (`time.process_time`, all threads) and context switches (all threads,
  `/proc/self/task/*/status`) per event minus those of the same paced loop without a
  bus (the mean of one run just before and one just after); one warm-up event
  delivered before the clock starts, the garbage collector's older objects frozen
  (`gc.freeze`) during each stream; two rounds. The bare loop itself sleeps once per
  event.
- **Bounds** (issue 16): `make bench` runs the criterion benches first; the engine's
  `dispatch/publish_and_deliver/1` is compared with a tokio unbounded channel (boxed
  item, send + receive on one thread, and to a task on a worker thread); W6 with
  `dispatch/publish_many/2048` (the slice the bus hands the engine); W8 with
  `sqlite/insert_group_sync/256`, a bare rusqlite loop inserting the store's rows in
  transactions of 256 with WAL and `synchronous=FULL`.
- **W2**: the same stream into five consumers on `hook.*`, `hook.**`, `**`, `hook.tool`,
  `system.**` (the last must see nothing); timed until the four matching ones saw all.
- **W3**: W2 plus 1,000 idle consumers on wildcard patterns no event matches
  (`idle.<i>.*` / `idle.<i>.**`). The event count is calibrated per implementation to
  about one second (the original moves a few dozen events per second here), so compare
  rates, not totals.
- **W4**: `await bus.publish(event)` timed one by one with `time.perf_counter_ns` (event
  built before the clock starts), yielding to the loop every 100 publishes so a `hook.**`
  consumer runs meanwhile; p99 per round, median over rounds.
- **W5**: in a fresh process, a `hook.**` consumer is parked inside `consume`, 100,000
  tool-use events are published, and resident memory growth (`/proc/self/statm`) is
  divided by 100,000. RSS sees native allocations; the tracemalloc figure does not.
- **W8** (ours only, issue 4): the hook stream from 256 concurrent publishing tasks into one
  consumer on a bus with `enable_persistence=True, durability="sync"` (SQLite/WAL on the local
  disk; each `publish` completes once its event is on disk, group commit), until the consumer
  has seen every event.
- **W9** (ours only, issue 4): the same with `durability="async"`, as a percentage of the same
  workload on an in-memory bus measured right before it.
- **W1r** (issue 15, ours only): W1 with one content rule on its consumer
  (`{"data": {"tool": ["Bash"]}}`, which every W1 event matches, so the payload is
  converted and matched in Rust per event), as a percentage of W1 measured right before
  it. The combined rule matcher and payload-schema validation are measured by criterion
  (`cargo bench --no-default-features --bench engine -- "rules|schema"`:
  `rules/combined/{10,10000}`, `schema/tool_use_check`); see docs/routing.md.
- **W6** (ours only): `publish_batch` of 1,000,000 events into `MetricsConsumer`, until
  `join()` returns.
- **W7**: wall time of `python -c "import ..."` minus a paired `python -c "pass"`,
  interleaved, median of many. The original is imported through
  `tests/helpers/original_loader.py` (its package cannot be imported as shipped).
- **W10** (issue 12): wall time of one cold hook process, from spawn to exit, median:
  `python -m mpm_events hook --backend sqlite:///...` on a `PreToolUse` input (the event
  committed and fsynced before it answers), 20 runs, beside claude-mpm's real handler
  (`python -m claude_mpm.hooks.claude_hooks.hook_handler`, run by
  `tests/helpers/claude_hook_baseline.py` with its `claude` stub and a local server
  taking its POSTs) on the same input, 5 runs (each takes a second or more),
  alternately, after one warm-up run each, with bytecode caching on
  (`benches/hookprobe.py`).
- **W11** (issue 12, ours only): one shared SQLite log, 4 publisher processes appending
  and 2 consumer processes (two consumer names, each gets every event) claiming and
  acknowledging (`benches/logprobe.py`): single appends (sync, and normal durability),
  batches of 1,000 (the table's number: through `EventBus(backend=...)`), and a paced
  stream for latency; events/s end to end and publish-to-consume p50/p99 across
  processes are in the notes, through the bus and through the benchmark-level
  functions `_core._log_append` / `_log_read` / `_log_ack` (one transaction per call).
- **W12** (issue 13, ours only): the bus on Redis Streams, on a private `redis-server`
  (free port, AOF fsync every second) started by `benches/logprobe.py --redis`:
  `publish_batch` of 1,000 with 8 batches in flight (the table's number), awaited single
  `publish` p50/p99, one consumer name draining 200,000 events with a Rust sink
  (`MetricsConsumer`) and with a Python consumer (batches of 1,000, reading
  `event.data`), 20 cold `mpm-events hook --backend redis://...` processes (median
  wall time, spawn to exit), and `redis-benchmark`'s raw XADD rate on the same server
  as the ceiling (notes). Met when all of issue 13's W12 targets are: `publish_batch`
  >= 200k/s, publish p50 <= 0.3 ms, Rust sink >= 100k/s, Python consumer >= 50k/s,
  cold hook <= 60 ms.
- Both buses get the same `max_queue_size` (4x the events: the original splits it into
  four per-priority deques that drop silently when full). Each measurement runs in a fresh
  event loop; rounds alternate which implementation goes first.
- Charts: event counts are calibrated per point and implementation to a fixed time
  budget; the y axis is logarithmic.
"""
