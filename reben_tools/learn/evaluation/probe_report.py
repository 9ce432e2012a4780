"""The probing protocol's report: the study's Markdown table and the per-class F2 figure.

The table follows the DOFA-on-BigEarthNet study: one table per train fraction, rows random
forest / linear probe / MLP, columns F2 macro, F2 micro, Hamming loss, precision macro,
precision micro and AP (macro average precision). Scores are in percent with one decimal, as
in the study; the Hamming loss is the share of wrong (patch, class) decisions, as a fraction.

After the tables, the comparison protocol's section (when the result has one): per probe, the
mean macro / micro AP over the repeated held-out splits with its standard error and 95%
interval, and, against a baseline, the paired difference, its interval and the verdict.

Owns: TABLE_ROWS, TABLE_COLUMNS, METRIC_NAMES, markdown_table, protocol_markdown, write_table,
plot_per_class_f2, per_class_f2_figure.
Does not own: the figures themselves (probes.py computes them with metrics.py), the
embedding map (embedding_map.py).
May import: numpy, matplotlib (lazily); reben_tools.format.atomic.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from reben_tools.format.atomic import save_figure_atomic

TABLE_ROWS = (("random_forest", "RF"), ("linear", "linear"), ("mlp", "MLP"))
"""(probe kind, row name), in the study's order."""
TABLE_COLUMNS = (
    ("f2_macro", "F2 macro", True),
    ("f2_micro", "F2 micro", True),
    ("hamming_loss", "Hamming loss", False),
    ("precision_macro", "precision macro", True),
    ("precision_micro", "precision micro", True),
    ("average_precision_macro", "AP", True),
)
"""(metric key, column name, shown in percent)."""
METRIC_NAMES = {
    "average_precision_macro": "AP macro",
    "average_precision_micro": "AP micro",
    "f1_macro": "F1 macro",
    "f1_micro": "F1 micro",
    **{key: name for key, name, _ in TABLE_COLUMNS if key != "average_precision_macro"},
}
"""The names the report gives the metrics (figures use them too)."""
_PROBE_COLOURS = {"random_forest": "#1b9e77", "linear": "#d95f02", "mlp": "#7570b3"}


def _cell(value, percent: bool) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "n/a"
    return f"{100 * value:.1f}" if percent else f"{value:.3f}"


def markdown_table(results: dict) -> str:
    """The study's table(s) for a :func:`reben_tools.learn.evaluation.probes.probe_features` result."""
    source = results.get("source", {})
    what = (
        source.get("embeddings")
        or source.get("checkpoint")
        or (f"a randomly initialised {source['random_init']}" if source.get("random_init") else "features")
    )
    lines = [f"# Probes on {what}", ""]
    if results.get("modality"):
        lines.append(f"Modality: `{results['modality']}`, {results['features']} features.")
    else:
        lines.append(f"{results['features']} features.")
    lines += [
        f"Test patches: {results['test_samples']:,}. Scores in %; Hamming loss as a fraction; "
        "AP = macro average precision; decisions at probability 0.5."
    ]
    first: dict[str, Any] = next(iter(results["runs"][0]["probes"].values()), {}) if results["runs"] else {}
    empty = first.get("classes_without_positives") or []
    if empty:
        lines.append("")
        lines.append(
            f"{len(empty)} class(es) have no positive test patch ({'; '.join(empty)}): their F2 and "
            "precision count as 0 in the macro means (scikit-learn's zero-division rule); the macro AP "
            "leaves them out."
        )
    lines.append("")
    for run in results["runs"]:
        lines.append(f"## Train fraction {100 * run['train_fraction']:g}% ({run['train_samples']:,} train patches)")
        lines.append("")
        lines.append("| probe | " + " | ".join(name for _, name, _ in TABLE_COLUMNS) + " |")
        lines.append("|---|" + "---:|" * len(TABLE_COLUMNS))
        for kind, row in TABLE_ROWS:
            if kind not in run["probes"]:
                continue
            m = run["probes"][kind]
            lines.append(f"| {row} | " + " | ".join(_cell(m.get(key), pct) for key, _, pct in TABLE_COLUMNS) + " |")
        lines.append("")
    if results.get("protocol"):
        lines += protocol_markdown(results["protocol"])
    return "\n".join(lines)


def _interval(pair) -> str:
    return f"[{pair[0]:.3f}, {pair[1]:.3f}]"


def protocol_markdown(protocol: dict) -> list[str]:
    """Lines of the comparison protocol's section of ``probe.md``."""

    def span(values) -> str:
        return f"{min(values):,}" if min(values) == max(values) else f"{min(values):,}-{max(values):,}"

    fit, rest = protocol["fit_samples"], protocol["eval_samples"]
    lines = [
        f"## Comparison protocol: {protocol['repeats']} stratified splits of the {protocol['patches']:,} "
        f"held-out patches ({protocol['pool']})",
        "",
        f"Each probe is refitted on {span(fit)} of them and scored on the other "
        f"{span(rest)}, once per split. Mean over the splits, standard error (corrected for "
        "the splits sharing patches) and the 95% interval: the hull of the t interval and a paired "
        "bootstrap over the patches (`reben_tools/learn/evaluation/compare.py`). AP as a fraction.",
        "",
        "| probe | AP macro | SE | 95% interval | AP micro | SE | 95% interval |",
        "|---|---:|---:|---|---:|---:|---|",
    ]
    names = dict(TABLE_ROWS)
    for kind, metrics in protocol["probes"].items():
        cells = []
        for key in ("average_precision_macro", "average_precision_micro"):
            m = metrics[key]
            cells += [f"{m['mean']:.3f}", f"{m['se']:.3f}", _interval(m["interval"])]
        lines.append(f"| {names.get(kind, kind)} | " + " | ".join(cells) + " |")
    lines.append("")
    if protocol.get("comparison"):
        lines += [
            f"### Against the baseline: {protocol['baseline']}",
            "",
            "Paired by split: both feature sets are probed on the same splits. Verdict: `beats` when the "
            "whole interval of the difference is above 0, `loses` when below, otherwise `within noise (±x)`, "
            "x the interval's half-width.",
            "",
            "| probe | metric | these features | baseline | difference | 95% interval | verdict |",
            "|---|---|---:|---:|---:|---|---|",
        ]
        for kind, metrics in protocol["comparison"].items():
            for key, c in metrics.items():
                d = c["difference"]
                lines.append(
                    f"| {names.get(kind, kind)} | {METRIC_NAMES.get(key, key)} | {c['a']['mean']:.3f} | "
                    f"{c['b']['mean']:.3f} | {d['mean']:+.3f} | {_interval(d['interval'])} | {c['verdict']} |"
                )
        lines.append("")
    return lines


def write_table(results: dict, path: Path) -> None:
    """Write :func:`markdown_table` to ``path``."""
    from reben_tools.format.atomic import replaced_atomically

    with replaced_atomically(Path(path)) as tmp:
        tmp.write_text(markdown_table(results), encoding="utf-8")


def plot_per_class_f2(results: dict, path: Path) -> None:
    """Per-class test F2 of every probe, one panel per train fraction (PNG at ``path``); see
    :func:`per_class_f2_figure`."""
    import matplotlib.pyplot as plt

    fig = per_class_f2_figure(results)
    save_figure_atomic(fig, path, dpi=100)
    plt.close(fig)


def per_class_f2_figure(results: dict):
    """The per-class F2 Figure: classes are rows (full names, wrapped, with their test support);
    bars are the probes; one panel per train fraction. Classes without a positive test patch
    are marked."""
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = results["runs"]
    first = next(iter(runs[0]["probes"].values()))
    names = list(first["per_class"])
    support = [first["per_class"][n]["support"] for n in names]
    kinds = [k for k, _ in TABLE_ROWS if k in runs[0]["probes"]]
    labels = dict(TABLE_ROWS)
    y = np.arange(len(names))
    height = 0.8 / max(1, len(kinds))
    fig, axes = plt.subplots(
        1, len(runs), figsize=(4.2 * len(runs) + 4.8, 0.36 * len(names) + 2.6), sharey=True, squeeze=False
    )
    for ax, run in zip(axes[0], runs, strict=True):
        for i, kind in enumerate(kinds):
            values = [run["probes"][kind]["per_class"][n]["f2"] for n in names]
            macro = run["probes"][kind]["f2_macro"]
            ax.barh(
                y - 0.4 + (i + 0.5) * height,
                values,
                height=height,
                color=_PROBE_COLOURS.get(kind),
                label=f"{labels[kind]} (macro {100 * macro:.1f})",
            )
        ax.set_xlim(0, 1)
        ax.set_xlabel("F2 (test)")
        ax.set_title(
            f"train fraction {100 * run['train_fraction']:g}%\n({run['train_samples']:,} patches)", fontsize=10
        )
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.09), fontsize=8, ncol=1, frameon=False)
        ax.grid(axis="x", alpha=0.3)
    axes[0][0].set_yticks(
        y,
        [
            textwrap.fill(f"{n} ({s:,})" if s else f"{n} (no positives)", 48)
            for n, s in zip(names, support, strict=True)
        ],
        fontsize=8,
    )
    axes[0][0].invert_yaxis()
    fig.suptitle("per-class F2 of the probes (test support in brackets)", fontsize=11)
    fig.tight_layout()
    return fig
