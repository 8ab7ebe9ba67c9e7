"""The evaluation's pictures (SVG, matplotlib), drawn from ``results/eval/metrics.json`` alone.

Each function answers one question a user asks before submitting; the
captions in ``workflow/report/`` say which. Baselines are drawn on every
accuracy plot, so a model that sits on them (the tiny random default does)
is plain to see.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ..data.contracts import PLOTS  # noqa: E402


def _baselines(ax: Any, metrics: Mapping[str, Any]) -> None:
    base = metrics["baselines"]
    if base.get("uniform_random_accuracy") is not None:
        ax.axhline(base["uniform_random_accuracy"], color="grey", linestyle=":", label="uniform random guess")
    if base.get("most_frequent_accuracy") is not None:
        ax.axhline(base["most_frequent_accuracy"], color="black", linestyle="--",
                   label=f"always '{base['most_frequent_letter']}' (most frequent training letter)")


def adapter_accuracy(metrics: Mapping[str, Any], path: str) -> None:
    """Out-of-bag (and dev) accuracy of every adapter with its 95 % Wilson interval."""
    fig, ax = plt.subplots(figsize=(9, 4.6))
    for offset, (split, colour) in zip((-0.18, 0.18), (("oob", "tab:blue"), ("dev", "tab:orange"))):
        block = metrics.get(split)
        if not block:
            continue
        names = list(block["per_adapter"])
        rows = [block["per_adapter"][n] for n in names]
        xs = [i + offset for i in range(len(names))]
        ys = [r["accuracy"] if r["accuracy"] is not None else float("nan") for r in rows]
        low = [y - r["wilson_low"] if r["n"] else 0 for y, r in zip(ys, rows)]
        high = [r["wilson_high"] - y if r["n"] else 0 for y, r in zip(ys, rows)]
        ax.errorbar(xs, ys, yerr=[low, high], fmt="o", color=colour, capsize=2,
                    label=f"{'out-of-bag' if split == 'oob' else 'dev'} (n ≈ {round(sum(r['n'] for r in rows) / max(len(rows), 1))} per adapter)")
        ax.set_xticks(range(len(names)), names)
    _baselines(ax, metrics)
    serving = metrics.get("serving")
    served = f"\nserved: {serving['weights']} weights in {serving['dtype']} ({serving['kernels']})" if serving else ""
    ax.set(xlabel="adapter", ylabel="accuracy", ylim=(0, 1), title="Single-adapter accuracy (95 % Wilson intervals)" + served)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)  # below the axes: never over a point
    _save(fig, path)


def vote_size(metrics: Mapping[str, Any], path: str) -> None:
    """Dev accuracy against the number of voters: mean and 10–90 % band over random adapter sets."""
    fig, ax = plt.subplots(figsize=(9, 4.6))
    dev = metrics.get("dev")
    if dev:
        curve = dev["vote_size_curve"]
        xs = [r["voters"] for r in curve]
        ax.fill_between(xs, [r["p10"] for r in curve], [r["p90"] for r in curve], alpha=0.25, label="10–90 % of random adapter sets")
        ax.plot(xs, [r["mean"] for r in curve], marker="o", label="mean")
        for r in curve:
            if r["recipe_size"]:
                ax.annotate(str(r["voters"]), (r["voters"], r["mean"]), textcoords="offset points", xytext=(0, 8), ha="center", fontsize=8)
        ax.axhline(dev["ensemble_logprob_weighted"]["accuracy"] or 0, color="tab:green", linestyle="-.",
                   label="all adapters, logprob-weighted vote")
        if dev.get("round2") and dev["round2"]["round1_and_round2_accuracy"] is not None:
            r2 = dev["round2"]
            ax.axhline(r2["round1_and_round2_accuracy"], color="tab:red", linestyle=(0, (5, 2)),
                       label=f"all adapters, round 1 + round 2 ({r2['to_round2']} re-asked, {r2['changed_in_round2']} changed)")
    else:
        ax.text(0.5, 0.5, "no dev split (evaluation.dev_fraction: 0)", ha="center", transform=ax.transAxes)
    _baselines(ax, metrics)
    ax.set(xlabel="voters (recipe's sizes 15, 17, 19, 21, 25 labelled where there are enough adapters)", ylabel="dev accuracy",
           ylim=(0, 1), title="How many voters? Ensemble accuracy on dev")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)
    _save(fig, path)


def vote_share_accuracy(metrics: Mapping[str, Any], path: str) -> None:
    """Dev accuracy of the vote by the winner's share of all adapters' votes."""
    fig, ax = plt.subplots(figsize=(9, 4))
    dev = metrics.get("dev")
    buckets = dev["by_vote_share"] if dev else []
    labels = [f"{b['low']:.1f}–{b['high']:.1f}\n(n={b['n']})" for b in buckets]
    ax.bar(range(len(buckets)), [b["accuracy"] or 0 for b in buckets], color="tab:purple")
    ax.set_xticks(range(len(buckets)), labels, fontsize=8)
    _baselines(ax, metrics)
    ax.set(xlabel="winner's share of all adapters' votes", ylabel="dev accuracy", ylim=(0, 1),
           title="Is a narrow majority trustworthy? Accuracy by vote share (dev)")
    ax.legend(fontsize=8, loc="upper left")
    _save(fig, path)


def round1_vote_share(metrics: Mapping[str, Any], path: str) -> None:
    """Round-1 vote shares on the test questions, and how many went to round 2 and changed there."""
    test = metrics["test"]
    hist = test["vote_share_histogram"]
    fig, ax = plt.subplots(figsize=(9, 4))
    ax.bar([b["low"] + 0.05 for b in hist], [b["n"] for b in hist], width=0.09, color="tab:blue")
    ax.axvline(0.5, color="black", linestyle="--", label="strict majority needs more than half of all adapters")
    ax.set(xlabel="round-1 winner's share of all adapters", ylabel="test questions", xlim=(0, 1),
           title=f"Test: {test['questions']} questions, {test['to_round2']} to round 2, {test['changed_in_round2']} changed there")
    ax.legend(fontsize=8, loc="upper left")
    _save(fig, path)


def agreement(metrics: Mapping[str, Any], path: str) -> None:
    """How often two adapters give the same letter on the test questions."""
    table = metrics["test"]["pairwise_agreement"]
    names = list(table)
    grid = [[table[a][b] if table[a][b] is not None else float("nan") for b in names] for a in names]
    fig, ax = plt.subplots(figsize=(7, 6))
    image = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis")
    ax.set_xticks(range(len(names)), names, fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    invalid = metrics["test"]["invalid_per_adapter"]
    ax.set(xlabel="adapter", ylabel="adapter",
           title=f"Pairwise agreement on test (invalid answers: {sum(invalid.values())} in all)")
    fig.colorbar(image, ax=ax, label="share of questions with the same letter")
    _save(fig, path)


def loss_curves(adapter_dirs: Mapping[str, str], path: str) -> None:
    """Each adapter's training loss over its steps (``loss_curve.tsv`` in its folder) and their mean."""
    from ..data.contracts import LOSS_CURVE, read_loss_curve

    fig, ax = plt.subplots(figsize=(9, 4.6))
    curves = {name: read_loss_curve(os.path.join(folder, LOSS_CURVE)) for name, folder in adapter_dirs.items()}
    by_step: dict[float, list[float]] = {}
    for rows in curves.values():
        ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], color="tab:blue", alpha=0.35, linewidth=0.8)
        for r in rows:
            by_step.setdefault(r["step"], []).append(r["loss"])
    steps = sorted(s for s, values in by_step.items() if len(values) == len(curves))  # steps every adapter logged
    ax.plot(steps, [sum(by_step[s]) / len(curves) for s in steps], color="black", linewidth=2,
            label=f"mean of the {len(curves)} adapters")
    ax.plot([], [], color="tab:blue", alpha=0.35, label="one adapter")
    ax.set(xlabel="training step (one question per adapter per step)", ylabel="loss (answer letter + end of turn)",
           title="Training loss of every adapter", ylim=(0, None))
    ax.legend(fontsize=8)
    _save(fig, path)


def _save(fig: Any, path: str) -> None:
    fig.tight_layout()
    fig.savefig(path, format="svg")
    plt.close(fig)


def draw_all(metrics_path: str, outputs: Mapping[str, str]) -> None:
    """Rule ``plots``: each plot of :data:`PLOTS` to its output path (written atomically)."""
    from pathlib import Path

    metrics = json.loads(Path(metrics_path).read_text(encoding="utf-8"))
    for name in PLOTS:
        target = Path(outputs[name])
        tmp = target.with_name(f".{target.name}.tmp.svg")
        target.parent.mkdir(parents=True, exist_ok=True)
        globals()[name](metrics, str(tmp))
        os.replace(tmp, target)
