"""Plots and tables: training curves, and the Table-3-style comparison (markdown, CSV, PNG)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

HEADS_SHOWN = ("repin", "click", "hide")


def plot_training_curves(history: list[dict], path: Path, title: str = "") -> None:
    """Left: training loss per step (and its running mean); right: validation HIT@3 per epoch."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    losses = [x for e in history for x in e.get("step_losses", [])]
    if losses:
        left.plot(losses, lw=0.5, alpha=0.4, label="step")
        window = max(1, len(losses) // 50)
        smooth = pd.Series(losses).rolling(window, min_periods=1).mean()
        left.plot(smooth, lw=1.5, label=f"mean of {window}")
        bounds = np.cumsum([len(e.get("step_losses", [])) for e in history])[:-1]
        for b in bounds:
            left.axvline(b, color="grey", lw=0.5, ls=":")
        # the first steps' loss is far above the rest: keep the y-axis on the part that matters
        left.set_ylim(min(losses) * 0.95, float(np.percentile(losses, 99.5)) * 1.05)
    left.set(xlabel="step", ylabel="weighted BCE", title=f"{title} training loss")
    left.legend(fontsize=8)
    epochs = [e["epoch"] for e in history if "valid" in e]
    for key in sorted({k for e in history for k in e.get("valid", {}) if k.startswith("hit@")}):
        right.plot(epochs, [e["valid"][key] for e in history if "valid" in e], marker="o", label=key)
    right.set(xlabel="epoch", ylabel="validation", title="validation HIT@3")
    if epochs:
        right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- comparison ----------------------------------------------------------------------------------

NOT_MEASURABLE = "not measurable"  # a metric the test split cannot measure (None in the result)


def _num(x: float | None, fmt: str = ".4f") -> str:
    return NOT_MEASURABLE if x is None or not np.isfinite(x) else format(x, fmt)


def _pct(x: float | None) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{100 * x:+.2f}%"


def _count(n: int | None) -> str:
    return "n/a" if n is None else f"{int(n):,}"


def _lift_cell(entry: dict) -> str:
    if entry.get("lift_vs_no_sequence") is None:  # no request to judge, or the baseline itself
        return NOT_MEASURABLE if entry.get("n_requests") == 0 else "baseline"
    lo, hi = entry["interval"]
    return f"{_pct(entry['lift_vs_no_sequence'])} [{_pct(lo)}, {_pct(hi)}]"


def comparison_markdown(result: dict) -> str:
    models = result["models"]
    k = result["k"]
    lines = [
        f"Test split: days {result['test_days']}, {result['requests']['all']:,} requests "
        f"({result['requests']['core']:,} core-user, {result['requests']['non_core']:,} non-core"
        + (f"; only requests with >= {result['min_candidates']} candidates, of "
           f"{result['requests_before_min_candidates']:,}" if result.get("min_candidates", 1) > 1 else "")
        + "). "
        f"Lifts are relative to `{result['baseline']}` with paired bootstrap {int(100 * result['confidence'])}% "
        f"intervals over requests ({result['n_boot']} resamples)."
        + "".join(f" {h}: not measurable ({v['reason']}: {', '.join(v['metrics'])})."
                  for h, v in (result.get("not_measurable") or {}).items()),
        "",
        f"| model | parameters | repin HIT@{k} | lift | click HIT@{k} | lift | hide HIT@{k} | lift | "
        f"hides in repin top-{k} (lower=better) | lift | AUC repin / click / hide | topics@{k} |",
        "|---|---:|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, m in models.items():
        cells = [f"`{name}`", _count(m.get("parameters"))]
        for head in HEADS_SHOWN:
            cells += [_num(m[head]['hit_at_3']), _lift_cell(m[head])]
        hr = m["hide_rate_top3"]
        cells += [_num(hr['value']), _lift_cell(hr)]
        cells.append(" / ".join(_num(m[h]['auc']) for h in HEADS_SHOWN))
        cells.append(_num(m['topic_diversity_top3'], ".3f"))
        lines.append("| " + " | ".join(cells) + " |")

    lines += ["", f"Repin HIT@{k} lift over `{result['baseline']}` by user segment:", "",
              "| model | core users | non-core users |", "|---|---|---|"]
    for name, m in models.items():
        seg = m["segments"]
        lines.append(f"| `{name}` | {_lift_cell(seg['core']['repin'])} | {_lift_cell(seg['non_core']['repin'])} |")

    first = next(iter(models.values()))
    if "gauc" in first.get("click", {}):
        lines += ["", "User-level GAUC (per-user AUC weighted by the user's test impressions, over users "
                  "with both classes; lift intervals resample users):", "",
                  "| model | " + " | ".join(f"{h} GAUC | lift" for h in HEADS_SHOWN) + " |",
                  "|---|" + "---|---|" * len(HEADS_SHOWN)]
        for name, m in models.items():
            cells = [f"`{name}`"]
            for h in HEADS_SHOWN:
                e = m[h]
                lift = {"lift_vs_no_sequence": e.get("gauc_lift_vs_no_sequence"), "interval": e.get("gauc_interval")}
                cells += [_num(e.get("gauc")), _lift_cell(lift) if "gauc_interval" in e else NOT_MEASURABLE]
            lines.append("| " + " | ".join(cells) + " |")
    by_segment = result.get("by_segment") or {}
    if len(by_segment) > 1:
        names = list(models)
        lines += ["", f"HIT@{k} lift over `{result['baseline']}` by the world's user segment "
                  "(requests per segment in brackets):", "",
                  "| segment | head | " + " | ".join(f"`{n}`" for n in names) + " |",
                  "|---|---|" + "---|" * len(names)]
        for value, entry in by_segment.items():
            for h in ("click", "repin"):
                cells = []
                for n in names:
                    e = entry["models"][n][h]
                    cells.append(_lift_cell(e))
                lines.append(f"| {value} ({entry['requests']:,}) | {h} | " + " | ".join(cells) + " |")

    primary = result.get("primary")
    if result.get("primary_vs"):
        lines += ["", f"`{primary}` against each other model (paired bootstrap, positive = `{primary}` "
                  "higher; for hides in the top-3, negative = fewer hides):", "",
                  f"| other model | repin HIT@{k} | click HIT@{k} | hides in repin top-{k} | click GAUC |",
                  "|---|---|---|---|---|"]
        for other, v in result["primary_vs"].items():
            cells = [f"{_pct(v[m]['lift'])} [{_pct(v[m]['interval'][0])}, {_pct(v[m]['interval'][1])}]"
                     if m in v else NOT_MEASURABLE for m in ("repin", "click", "hide_rate_top3", "gauc_click")]
            lines.append(f"| `{other}` | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def comparison_rows(result: dict) -> pd.DataFrame:
    """Long format: one row per (model, segment, metric)."""
    rows = []
    for name, m in result["models"].items():
        for segment, block in (("all", m), *m["segments"].items()):
            for metric in (*HEADS_SHOWN, "hide_rate_top3"):
                e = block[metric]
                value_key = "hit_at_3" if metric in HEADS_SHOWN else "value"
                lo, hi = e.get("interval") or (None, None)
                rows.append({"model": name, "parameters": m.get("parameters"), "segment": segment,
                             "metric": f"hit_at_3_{metric}" if metric in HEADS_SHOWN else metric,
                             "value": e[value_key], "auc": e.get("auc"),
                             "lift_vs_no_sequence": e.get("lift_vs_no_sequence"), "low": lo, "high": hi,
                             "note": NOT_MEASURABLE if e[value_key] is None else ""})
            rows.append({"model": name, "parameters": m.get("parameters"), "segment": segment,
                         "metric": "topic_diversity_top3",
                         "value": block["topic_diversity_top3"]})
    return pd.DataFrame(rows)


def plot_comparison(result: dict, path: Path) -> None:
    """Lift over the no-sequence model with 95% intervals: repin, click, hides in repin top-3."""
    names = [n for n in result["models"] if n != result["baseline"]]
    panels = (("repin", "repin HIT@3 lift"), ("click", "click HIT@3 lift"),
              ("hide_rate_top3", "hides in repin top-3 (lower = better)"))
    fig, axes = plt.subplots(1, 3, figsize=(14, 4), sharey=False)
    for ax, (metric, title) in zip(axes, panels):
        for offset, (segment, colour) in enumerate((("all", "C0"), ("non_core", "C1"))):
            vals, errs = [], [[], []]
            for n in names:
                block = result["models"][n] if segment == "all" else result["models"][n]["segments"][segment]
                e = block[metric]
                if e["lift_vs_no_sequence"] is None:  # a segment without such requests: no bar
                    lift = lo = hi = float("nan")
                else:
                    lift, (lo, hi) = e["lift_vs_no_sequence"], e["interval"]
                vals.append(100 * lift)
                errs[0].append(100 * (lift - lo))
                errs[1].append(100 * (hi - lift))
            x = np.arange(len(names)) + (offset - 0.5) * 0.38
            ax.bar(x, vals, width=0.38, color=colour, yerr=errs, capsize=2,
                   label="all users" if segment == "all" else "non-core users")
        if all(result["models"][n][metric]["lift_vs_no_sequence"] is None for n in names):
            ax.text(0.5, 0.6, NOT_MEASURABLE, transform=ax.transAxes, ha="center", va="center")
        ax.axhline(0, color="black", lw=0.7)
        ax.set_xticks(np.arange(len(names)), names, rotation=35, ha="right", fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.set_ylabel("% vs no-sequence model")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
