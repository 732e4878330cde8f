"""The report of one `homefeed demo` run: markdown + PNG plots in the demo's directory.

Pure functions only (no network, no Kafka): the demo scrapes the consumer's and the service's
Prometheus `/metrics` text and passes it here together with what it measured.

* `parse_histograms` / `counter_total`: Prometheus text -> numbers (prometheus_client's parser);
* `Histogram.quantile`: Prometheus' `histogram_quantile` (linear inside the bucket);
* `plot_freshness`, `plot_stage_latency`: PNGs (matplotlib, Agg backend);
* `report_markdown` / `write_report`: the page, which embeds `homefeed evaluate --compare`'s
  comparison.md and links its comparison.png and every run's curves.png (nothing is recomputed).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from homefeed.jsonable import jsonable  # noqa: E402

FRESHNESS_METRIC = "homefeed_stream_freshness_seconds"
STAGE_METRIC = "homefeed_rank_stage_seconds"
APPLIED_METRIC = "homefeed_stream_events_applied_total"
BATCH_METRIC = "homefeed_stream_batch_seconds"
STAGE_ORDER = ("features", "tensors", "model", "rank")


# -- Prometheus text -> numbers ------------------------------------------------------------------

@dataclass
class Histogram:
    """One Prometheus histogram series: cumulative counts per upper bound (the last is +Inf)."""

    bounds: list[float]
    cumulative: list[float]
    count: float
    total: float  # the _sum sample

    def counts(self) -> list[float]:
        """Per-bucket (not cumulative) counts, one per bound."""
        return [c - p for c, p in zip(self.cumulative, [0.0, *self.cumulative[:-1]])]

    @property
    def mean(self) -> float | None:
        return self.total / self.count if self.count else None

    def quantile(self, q: float) -> float | None:
        """Prometheus' histogram_quantile: linear interpolation inside the bucket that holds
        rank q*count; the lowest bucket starts at 0; a rank in the +Inf bucket returns the highest
        finite bound. None without observations."""
        if not self.count or not self.bounds:
            return None
        rank = q * self.count
        lower_bound, lower_count = 0.0, 0.0
        for bound, cum in zip(self.bounds, self.cumulative):
            if cum >= rank:
                if math.isinf(bound):
                    finite = [b for b in self.bounds if not math.isinf(b)]
                    return finite[-1] if finite else None
                if cum == lower_count:
                    return bound
                return lower_bound + (bound - lower_bound) * (rank - lower_count) / (cum - lower_count)
            lower_bound, lower_count = bound, cum
        return None

    def to_json(self) -> dict:
        """What report.json keeps of a histogram (the +Inf bound as null)."""
        return {"bounds": [None if math.isinf(b) else b for b in self.bounds], "counts": self.counts(),
                "count": self.count, "sum": self.total, "p50": self.quantile(0.5), "p99": self.quantile(0.99)}

    def minus(self, earlier: "Histogram | None") -> "Histogram":
        """The observations made since `earlier` (same series scraped before)."""
        if earlier is None:
            return self
        return Histogram(self.bounds, [a - b for a, b in zip(self.cumulative, earlier.cumulative)],
                         self.count - earlier.count, self.total - earlier.total)


def _family(text: str, name: str):
    for family in text_string_to_metric_families(text):
        # prometheus_client strips _total from counter family names
        if family.name in (name, name.removesuffix("_total")):
            yield family


def parse_histograms(text: str, name: str, by: str | None = None) -> dict[str, Histogram]:
    """Histogram series of metric `name` in Prometheus exposition text, keyed by the value of
    label `by` ("" when `by` is None: the series are summed)."""
    buckets: dict[str, dict[float, float]] = {}
    counts: dict[str, float] = {}
    sums: dict[str, float] = {}
    for family in _family(text, name):
        for sample in family.samples:
            key = sample.labels.get(by, "") if by else ""
            if sample.name.endswith("_bucket"):
                le = float(sample.labels["le"])
                series = buckets.setdefault(key, {})
                series[le] = series.get(le, 0.0) + sample.value
            elif sample.name.endswith("_count"):
                counts[key] = counts.get(key, 0.0) + sample.value
            elif sample.name.endswith("_sum"):
                sums[key] = sums.get(key, 0.0) + sample.value
    out = {}
    for key, series in buckets.items():
        bounds = sorted(series)
        out[key] = Histogram(bounds, [series[b] for b in bounds], counts.get(key, series[bounds[-1]]),
                             sums.get(key, 0.0))
    return out


def counter_total(text: str, name: str) -> float:
    """Sum of every series of a counter (or gauge) in Prometheus text; 0 when absent."""
    total = 0.0
    for family in _family(text, name):
        for sample in family.samples:
            if sample.name in (name, name + "_total") or (family.type == "gauge" and sample.name == name):
                total += sample.value
    return total


# -- plots ---------------------------------------------------------------------------------------

def _bound_label(bound: float) -> str:
    if math.isinf(bound):
        return "+Inf"
    return f"{bound * 1000:g} ms" if bound < 1 else f"{bound:g} s"


def plot_freshness(hist: Histogram, path: Path, title: str = "") -> Path:
    """Bar chart of per-bucket counts of the freshness histogram (arrival -> visible online)."""
    labels, lower = [], "0"
    for bound in hist.bounds:
        labels.append(f"> {lower}" if math.isinf(bound) else f"≤ {_bound_label(bound)}")
        lower = _bound_label(bound)
    fig, ax = plt.subplots(figsize=(9, 3.6))
    ax.bar(range(len(labels)), hist.counts(), color="C0")
    ax.set_xticks(range(len(labels)), labels, rotation=35, ha="right", fontsize=8)
    ax.set_ylabel("events")
    p50, p99 = hist.quantile(0.5), hist.quantile(0.99)
    stats = f"n={int(hist.count)}" + (f", mean {hist.mean * 1000:.0f} ms" if hist.mean is not None else "")
    if p50 is not None:
        stats += f", p50≈{p50 * 1000:.0f} ms, p99≈{p99 * 1000:.0f} ms"
    ax.set_title(title or f"freshness: broker arrival -> visible in the online store ({stats})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def ordered_stages(stages) -> list[str]:
    known = [s for s in STAGE_ORDER if s in stages]
    return known + sorted(s for s in stages if s not in STAGE_ORDER)


def plot_stage_latency(stages: dict[str, dict], path: Path, title: str = "") -> Path:
    """Grouped bars: p50 and p99 (ms) per serving stage. `stages`: {stage: {"p50": ms, "p99": ms}}."""
    names = ordered_stages(stages)
    fig, ax = plt.subplots(figsize=(7, 3.6))
    width = 0.38
    for offset, (key, colour) in enumerate((("p50", "C0"), ("p99", "C3"))):
        values = [stages[s].get(key) or 0.0 for s in names]
        xs = [i + (offset - 0.5) * width for i in range(len(names))]
        bars = ax.bar(xs, values, width=width, color=colour, label=key)
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel("ms")
    ax.set_title(title or "serving latency by stage", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# -- markdown ------------------------------------------------------------------------------------

def _ms(x) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def _rel(path: Path | str, start: Path) -> str:
    return Path(os.path.relpath(Path(path), start)).as_posix()


def stage_rows(burst: dict, scraped: dict[str, Histogram]) -> list[dict]:
    """One row per stage: the burst's exact p50/p99 (from each response's timings_ms) and the
    service's /metrics histogram (every request it served, bucket-interpolated)."""
    rows = []
    stages = burst.get("stages_ms", {})
    for stage in ordered_stages(set(stages) | set(scraped)):
        h = scraped.get(stage)
        q = (lambda p: None if h is None or h.quantile(p) is None else 1000 * h.quantile(p))  # noqa: E731
        rows.append({"stage": stage, "p50_ms": stages.get(stage, {}).get("p50"),
                     "p99_ms": stages.get(stage, {}).get("p99"),
                     "metrics_count": int(h.count) if h else 0, "metrics_p50_ms": q(0.5), "metrics_p99_ms": q(0.99)})
    return rows


def report_markdown(ctx: dict, out_dir: Path) -> str:
    """The report page. `ctx` keys (all optional but `title`): title, settings (dict of str),
    steps ({name: seconds}), comparison_md (path), comparison_png (path), curves ({model: path}),
    live (the live step's dict), freshness (Histogram), freshness_png, freshness_live (Histogram of
    the live actions only), burst (load_test's dict), stage_hist ({stage: Histogram}),
    latency_png."""
    lines = [f"# {ctx['title']}", ""]
    if ctx.get("settings"):
        lines += [" · ".join(f"{k}: `{v}`" for k, v in ctx["settings"].items()), ""]

    live = ctx.get("live")
    if live:
        lines += ["## Live step", ""]
        took = live.get("seconds_to_change")
        lines.append(f"User {live['user']} sent {live.get('actions', '?')} actions through the events API into Kafka "
                     f"(repins on topic {live['liked_topic']}, a hide on topic {live['disliked_topic']}). "
                     + ("The ranking **did not change** within the time limit." if took is None else
                        f"`/rank` returned a different top {len(live['after'])} **{took:.2f} s** after the "
                        "actions were sent."))
        lines += ["", "| | seconds |", "|---|---|"]
        for key, label in (("send_s", "POST to the events API until its 202 (broker acknowledged)"),
                           ("fresh_mean_s", "broker arrival -> visible in Redis (consumer, mean of the live actions)"),
                           ("fresh_max_s", "broker arrival -> visible in Redis (consumer, max, bucket bound)"),
                           ("batch_mean_s", "of which: making the micro-batch durable (GX suite, log, Feast "
                                            "write, state; mean per batch)"),
                           ("seconds_to_change", "actions sent -> `/rank` top changed (demo, incl. polling)"),
                           ("rank_call_ms", "one `/rank` call while polling (ms, median)")):
            if live.get(key) is not None:
                lines.append(f"| {label} | {live[key]:.3f} |")
        lines += ["", f"Polls of `/rank`: {live.get('polls', 'n/a')}.", "",
                  "| rank | before (pin, topic) | after (pin, topic) |", "|---|---|---|"]
        for i, (b, a) in enumerate(zip(live["before"], live["after"]), 1):
            lines.append(f"| {i} | {tuple(b)} | {tuple(a)} |")
        lines.append("")

    lines += ["## Models: comparison on the test days", ""]
    if ctx.get("comparison_md") and Path(ctx["comparison_md"]).is_file():
        lines += [f"From `homefeed evaluate --compare` ([comparison.md]({_rel(ctx['comparison_md'], out_dir)})), "
                  "embedded as written:", "", Path(ctx["comparison_md"]).read_text().rstrip(), ""]
    else:
        lines += ["No comparison was written.", ""]
    if ctx.get("comparison_png") and Path(ctx["comparison_png"]).is_file():
        lines += [f"![lifts with 95% intervals]({_rel(ctx['comparison_png'], out_dir)})", ""]

    if ctx.get("curves"):
        lines += ["## Training curves", "", "Training loss per step and validation HIT@3 per epoch, per model:", ""]
        for name, path in ctx["curves"].items():
            lines += [f"### `{name}`", "", f"![{name} training curves]({_rel(path, out_dir)})", ""]

    fresh = ctx.get("freshness")
    if fresh is not None:
        lines += ["## Freshness", "",
                  f"`{FRESHNESS_METRIC}` scraped from the live consumer's `/metrics`: time from an event's "
                  "arrival at the broker (record timestamp) to its sequence being visible in the online store. "
                  f"{int(fresh.count)} live events"
                  + (f": mean {fresh.mean * 1000:.0f} ms, p50 ≈ {_ms(_x1000(fresh.quantile(0.5)))} ms, "
                     f"p99 ≈ {_ms(_x1000(fresh.quantile(0.99)))} ms (interpolated in buckets)."
                     if fresh.count else "."),
                  ""]
        if ctx.get("freshness_png"):
            lines += [f"![freshness histogram]({_rel(ctx['freshness_png'], out_dir)})", ""]
        lines += ["| bucket | events |", "|---|---|"]
        lower = "0"
        for bound, n in zip(fresh.bounds, fresh.counts()):
            lines.append(f"| {'> ' + lower if math.isinf(bound) else '≤ ' + _bound_label(bound)} | {int(n)} |")
            lower = _bound_label(bound)
        lines.append("")

    burst = ctx.get("burst")
    if burst:
        lines += ["## Serving latency by stage", "",
                  f"{burst['requests']} sequential `/rank` requests at {burst['candidates']} candidates "
                  f"(concurrency {burst['concurrency']}, {burst['errors']} errors): end to end over HTTP "
                  f"p50 {_ms(burst.get('p50_ms'))} ms, p99 {_ms(burst.get('p99_ms'))} ms, "
                  f"{burst.get('throughput_rps')} requests/s. Per stage, p50/p99 from each response's "
                  f"`timings_ms`, and `{STAGE_METRIC}` from the service's `/metrics` (every request it "
                  "served, including the live step's polls; interpolated in buckets):", ""]
        if ctx.get("latency_png"):
            lines += [f"![serving latency by stage]({_rel(ctx['latency_png'], out_dir)})", ""]
        lines += ["| stage | p50 ms | p99 ms | /metrics count | /metrics p50 ≈ ms | /metrics p99 ≈ ms |",
                  "|---|---|---|---|---|---|"]
        for r in stage_rows(burst, ctx.get("stage_hist") or {}):
            lines.append(f"| {r['stage']} | {_ms(r['p50_ms'])} | {_ms(r['p99_ms'])} | {r['metrics_count']} | "
                         f"{_ms(r['metrics_p50_ms'])} | {_ms(r['metrics_p99_ms'])} |")
        lines.append("")

    if ctx.get("steps"):
        lines += ["## Step timings", "", "| step | seconds |", "|---|---|"]
        for name, secs in ctx["steps"].items():
            lines.append(f"| {name} | {secs:.1f} |")
        lines += [f"| total | {sum(ctx['steps'].values()):.1f} |", ""]
    return "\n".join(lines) + "\n"


def _x1000(x):
    return None if x is None else 1000 * x


def write_report(out_dir: Path | str, ctx: dict, name: str = "report.md") -> Path:
    """Plots (freshness.png, serving_latency.png) and the markdown page in out_dir; report.json
    holds the numbers. Returns the markdown path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ctx = dict(ctx)
    if ctx.get("freshness") is not None:
        ctx["freshness_png"] = plot_freshness(ctx["freshness"], out / "freshness.png")
    if ctx.get("burst") and ctx["burst"].get("stages_ms"):
        ctx["latency_png"] = plot_stage_latency(ctx["burst"]["stages_ms"], out / "serving_latency.png",
                                                f"/rank stages, {ctx['burst']['candidates']} candidates")
    path = out / name
    path.write_text(report_markdown(ctx, out))
    (out / "report.json").write_text(json.dumps(jsonable(ctx), indent=2) + "\n")
    return path
