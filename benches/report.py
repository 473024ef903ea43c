"""Turn a results dict (``benches/results/latest.json``) into a table, targets and docs."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

ORIGINAL, OURS = "original", "ours"


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


def check_targets(workloads: dict[str, Any]) -> dict[str, Any]:
    """Whether each of issue 5's targets is met; ``None`` when ours was not measured."""
    out: dict[str, Any] = {}

    def ours(key: str) -> float | None:
        return _median(workloads.get(key, {}).get(OURS))

    def ratio(key: str) -> float | None:
        return workloads.get(key, {}).get("ratio")

    def verdict(key: str, ok: bool | None, detail: str) -> None:
        out[key] = {"target": workloads[key]["target"], "met": ok, "detail": detail}

    for key in ("W1", "W2"):
        r = ratio(key)
        verdict(key, None if r is None else r >= 10, f"ratio {r:.1f}x" if r else "not measured")
    r3, w3, w2 = ratio("W3"), ours("W3"), ours("W2")
    if r3 is None or w3 is None or w2 is None:
        verdict("W3", None, "not measured")
    else:
        verdict("W3", r3 >= 1000 and w3 >= 0.8 * w2, f"ratio {r3:,.0f}x, W3/W2 {w3 / w2:.2f}")
    p99 = ours("W4")
    verdict("W4", None if p99 is None else p99 < 20, f"p99 {p99:.2f} us" if p99 else "-")
    r5 = ratio("W5")
    verdict("W5", None if r5 is None else r5 <= 1 / 3, f"ratio {r5:.2f}" if r5 else "-")
    w6 = ours("W6")
    verdict("W6", None if w6 is None else w6 >= 2e6, f"{w6:,.0f} events/s" if w6 else "-")
    w7 = ours("W7")
    verdict("W7", None if w7 is None else w7 <= 30, f"+{w7:.1f} ms" if w7 is not None else "-")
    if "W8" in workloads:
        w8 = ours("W8")
        verdict("W8", None if w8 is None else w8 >= 1e5, f"{w8:,.0f} events/s" if w8 else "-")
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
        verdict("W12", None if w12 is None else w12 >= 90, f"{w12:.0f}% of W1" if w12 else "-")
    return out


def rows(results: dict[str, Any]) -> list[list[str]]:
    targets = results.get("targets", {})
    out = []
    for key, entry in results["workloads"].items():
        if entry.get(ORIGINAL) is None and entry.get(OURS) is None:
            continue
        unit = entry["unit"]
        met = targets.get(key, {}).get("met")
        out.append(
            [
                key,
                entry["title"],
                f"{entry['metric']} ({unit})",
                cell(entry.get(ORIGINAL), unit),
                cell(entry.get(OURS), unit),
                ratio_text(entry),
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
                out.append([*row, ratio, target, "-"])
    return out


HEADER = ["", "workload", "metric", "original", "ours", "ours/original", "target", "met"]


def table(results: dict[str, Any]) -> str:
    body = rows(results)
    widths = [max(len(r[i]) for r in [HEADER, *body]) for i in range(len(HEADER))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(HEADER, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in body]
    impl = results["implementations"]
    if not impl[OURS]["available"]:
        lines.append(f"ours: NOT AVAILABLE ({impl[OURS]['reason']}); only the original ran")
    floor = results.get("floor", {})
    if "await_noop_ns" in floor:
        lines.append(
            f"floor: awaiting a trivial coroutine costs {floor['await_noop_ns']:.0f} ns, so one "
            f"Python consumer cannot exceed {floor['max_events_per_s_one_consumer']:,.0f} events/s"
        )
    w1 = _median(results["workloads"].get("W1", {}).get(OURS))
    if w1 and "max_events_per_s_one_consumer" in floor:
        share = w1 / floor["max_events_per_s_one_consumer"] * 100
        lines.append(f"ours W1 reaches {share:.1f}% of that ceiling")
    for note in results.get("notes", {}).items():
        lines.append(f"{note[0]}: {note[1]}")
    return "\n".join(lines)


def charts(results: dict[str, Any], img_dir: Path) -> list[tuple[str, str]]:
    """Write the PNG charts; returns (title, file name) pairs."""
    data = results.get("charts") or {}
    if not data:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img_dir.mkdir(parents=True, exist_ok=True)
    made = []
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
        "",
        "| " + " | ".join(HEADER[1:]) + " |",
        "|" + "---|" * (len(HEADER) - 1),
    ]
    for r in rows(results):
        md.append(f"| {r[0]} {r[1]} | " + " | ".join(r[2:]) + " |")
    verdicts = results.get("targets", {})
    if any(v["met"] is not None for v in verdicts.values()):
        md += ["", "Targets (issue 5):", ""]
        for key, v in verdicts.items():
            state = {True: "met", False: "**not met**", None: "not measured"}[v["met"]]
            md.append(f"- {key} {v['target']}: {state} ({v['detail']})")
    floor = results.get("floor", {})
    if "await_noop_ns" in floor:
        md += [
            "",
            f"Physical floor: awaiting a trivial Python coroutine costs "
            f"{floor['await_noop_ns']:.0f} ns here, so one Python consumer cannot exceed "
            f"{floor['max_events_per_s_one_consumer']:,.0f} events/s. "
            f"`perf_counter_ns()` itself costs {floor['perf_counter_ns_overhead_ns']:.0f} ns "
            f"(included in every W4 sample).",
        ]
        w1 = _median(results["workloads"].get("W1", {}).get(OURS))
        if w1:
            share = w1 / floor["max_events_per_s_one_consumer"] * 100
            md.append(f"Ours on W1 reaches {share:.1f}% of that ceiling.")
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
    for title, file in made:
        md += ["", f"![{title}](img/{file})"]
    md += ["", METHOD]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(md) + "\n")


METHOD = """## Method

Every workload is one function in `benches/workloads.py` that receives an implementation
object (the original's or ours) and uses only the shared API, so both run the same code.

- **W1**: `HookEventProducer(bus).publish_tool_use(...)` 200,000 times into one consumer on
  `hook.**`, timed from the first publish until the consumer has counted every event.
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
- **W12** (issue 15, ours only): W1 with one content rule on its consumer
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
  batches of 1,000 (the table's number), and a paced stream for latency; events/s end
  to end and publish-to-consume p50/p99 across processes are in the notes. It runs on
  the benchmark-level functions (not yet through `EventBus(backend=...)`)
  `_core._log_append` / `_log_read` / `_log_ack` (one transaction per call: no group
  commit across a process's publishers).
- Both buses get the same `max_queue_size` (4x the events: the original splits it into
  four per-priority deques that drop silently when full). Each measurement runs in a fresh
  event loop; rounds alternate which implementation goes first.
- Charts: event counts are calibrated per point and implementation to a fixed time
  budget; the y axis is logarithmic.
"""
