"""Plots the notebooks share (matplotlib)."""
from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt


def moving_average(values: Sequence[float], window: int) -> list[float]:
    """Trailing mean over up to ``window`` values (shorter at the start)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def plot_loss(losses: Sequence[float], title: str = "Training loss", window: int = 5, ax=None,
              validation: tuple[Sequence[int], Sequence[float]] | None = None):
    """Training loss per step (faint) and its moving average, and (steps, losses) of the validation set if
    given; returns the figure."""
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.5))
    steps = range(1, len(losses) + 1)
    ax.plot(steps, losses, alpha=0.35, label="train, per step")
    ax.plot(steps, moving_average(losses, window), label=f"train, mean of last {window}")
    if validation is not None:
        ax.plot(list(validation[0]), list(validation[1]), "o-", color="black", label="validation")
    ax.set(xlabel="optimizer step", ylabel="cross-entropy (answer tokens)", title=title, yscale="log")
    ax.legend()
    ax.grid(alpha=0.3)
    return ax.figure


def plot_accuracy(before: float, after: float, chance: float, title: str = "Test accuracy"):
    """Bar chart of accuracy before and after fine-tuning, with the chance level; returns the figure."""
    fig, ax = plt.subplots(figsize=(4.5, 3.5))
    bars = ax.bar(["base model", "after LoRA"], [before, after], color=["#999999", "#2a7ab9"])
    ax.bar_label(bars, labels=[f"{before:.0%}", f"{after:.0%}"])
    ax.axhline(chance, ls="--", color="k", lw=1, label=f"chance ({chance:.0%})")
    ax.set(ylim=(0, 1), ylabel="accuracy", title=title)
    ax.legend(loc="upper left")
    return fig


def plot_nf4_levels(normalized: Sequence[float], levels: Sequence[float], title: str = "Block-normalised weights"):
    """Histogram of weights divided by their block's absmax, with the 16 NF4 levels as vertical lines."""
    fig, ax = plt.subplots(figsize=(6.5, 3.5))
    ax.hist(normalized, bins=200, range=(-1, 1), density=True, color="#8aa9c9")
    for level in levels:
        ax.axvline(float(level), color="#c0392b", lw=0.9, alpha=0.8)
    ax.set(xlabel="w / absmax(block)", ylabel="density", title=title + " and the 16 NF4 levels (red)")
    return fig


def plot_perplexity_vs_memory(rows: dict[str, dict], baseline: str = "fp32"):
    """Perplexity against weight memory (MB) for each method in ``rows`` (name -> {"perplexity", "mb"})."""
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for i, (name, row) in enumerate(rows.items()):
        ax.scatter(row["mb"], row["perplexity"], s=50)
        # alternate labels above and below: points of equal quality (nf4, nf4-dq) sit side by side
        ax.annotate(name, (row["mb"], row["perplexity"]), textcoords="offset points",
                    xytext=(4, 6 if i % 2 == 0 else -14))
    ax.axhline(rows[baseline]["perplexity"], ls="--", color="k", lw=1, label=f"{baseline} perplexity")
    ax.set(xlabel="weight memory of the linear layers (MB)", ylabel="perplexity (lower is better)",
           title="Quality vs memory", xscale="log")
    ax.legend()
    ax.grid(alpha=0.3)
    return fig


def plot_dpo_runs(runs: dict[str, dict[str, Sequence[float]]]):
    """DPO loss and implicit-reward margin per step, one line per run (name -> history with ``loss`` and
    ``margin``); returns the figure."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5))
    for name, history in runs.items():
        steps = range(1, len(history["loss"]) + 1)
        left.plot(steps, history["loss"], marker=".", label=name)
        right.plot(steps, history["margin"], marker=".", label=name)
    left.set(xlabel="optimizer step", ylabel="loss", title="DPO loss (+ chosen NLL)")
    right.set(xlabel="optimizer step", ylabel="beta * (log-ratio chosen - rejected)", title="Implicit reward margin")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return fig


def plot_shared_prefix_mask(mask: Sequence[Sequence[bool]], segment: Sequence[int]):
    """Who attends to whom in one prefix-shared DPO sequence (:func:`course_lib.dpo.shared_prefix_batch`): a query
    token per row, a key token per column, coloured by the key's part (prompt, chosen, rejected), white where
    masked; returns the figure."""
    colours = [(0.55, 0.55, 0.55), (0.16, 0.48, 0.73), (0.85, 0.37, 0.01)]  # prompt, chosen, rejected
    image = [[colours[key] if allowed else (1.0, 1.0, 1.0) for allowed, key in zip(row, segment)] for row in mask]
    fig, ax = plt.subplots(figsize=(4.6, 4.6))
    ax.imshow(image, interpolation="nearest")
    for name, colour in zip(("prompt", "chosen", "rejected"), colours):
        ax.plot([], [], "s", color=colour, label=name)
    ax.set(xlabel="key (attended to)", ylabel="query (attending)", title="One sequence per preference pair")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    return fig


def plot_reward_distributions(panels: dict[str, tuple[Sequence[float], Sequence[float]]], xlabel: str = "reward"):
    """Histograms of chosen vs rejected rewards, one panel per stage (title -> (chosen, rejected))."""
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.3), squeeze=False)
    for ax, (title, (chosen, rejected)) in zip(axes[0], panels.items()):
        values = list(chosen) + list(rejected)
        low, high = min(values), max(values)
        bins = [low + (high - low + 1e-9) * i / 20 for i in range(21)]
        ax.hist(chosen, bins=bins, alpha=0.6, color="#2a7ab9", label="chosen")
        ax.hist(rejected, bins=bins, alpha=0.6, color="#d95f02", label="rejected")
        ax.set(title=title, xlabel=xlabel, ylabel="pairs")
        ax.legend()
    fig.tight_layout()
    return fig


def plot_confusion_matrices(matrices: dict[str, Sequence[Sequence[int]]], labels: Sequence[str]):
    """Confusion matrices side by side (rows true label, columns predicted), each cell annotated with its count;
    returns the figure."""
    fig, axes = plt.subplots(1, len(matrices), figsize=(4.2 * len(matrices), 3.8), squeeze=False)
    for ax, (name, matrix) in zip(axes[0], matrices.items()):
        counts = [[int(x) for x in row] for row in matrix]
        ax.imshow(counts, cmap="Blues")
        for i, row in enumerate(counts):
            for j, value in enumerate(row):
                ax.text(j, i, str(value), ha="center", va="center",
                        color="white" if value > max(map(max, counts)) / 2 else "black")
        ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
        ax.set_yticks(range(len(labels)), labels)
        ax.set(xlabel="predicted", ylabel="true", title=name)
    fig.tight_layout()
    return fig


def plot_intervals(rows: dict[str, tuple[float, float, float]], xlabel: str, title: str = ""):
    """One row per name: the estimate (dot) and its interval (bar), (estimate, low, high); returns the figure."""
    fig, ax = plt.subplots(figsize=(6.5, 0.5 * len(rows) + 1.2))
    names = list(rows)
    for y, name in enumerate(names):
        estimate, low, high = rows[name]
        ax.plot([low, high], [y, y], color="#2a7ab9", lw=3, solid_capstyle="butt")
        ax.plot([estimate], [y], "o", color="black")
        ax.annotate(f"{estimate:.3f} [{low:.3f}, {high:.3f}]", (high, y), textcoords="offset points", xytext=(6, -4),
                    fontsize=8)
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.set(xlabel=xlabel, title=title)
    ax.grid(axis="x", alpha=0.3)
    ax.margins(x=0.25)
    return fig


def plot_lora_sweep(sweeps: dict[str, list[dict]], metric: str = "validation_accuracy"):
    """One panel per swept setting (``scripts/measure/sweep_lora.py``): ``metric`` against the setting's values, each
    point labelled with its training time; where an entry holds several seeds (``runs``), the point is their mean,
    each seed a faint dot and the bar their range. Returns the figure."""
    fig, axes = plt.subplots(1, len(sweeps), figsize=(3.3 * len(sweeps), 3.2), squeeze=False)
    for ax, (setting, runs) in zip(axes[0], sweeps.items()):
        key = {"rank": "r"}.get(setting, setting)
        labels = [("all linear" if len(run[key]) > 2 else "+".join(run[key])) if key == "targets" else f"{run[key]:g}"
                  for run in runs]
        values = [run[metric] for run in runs]
        ax.plot(range(len(runs)), values, "o-")
        for x, run in enumerate(runs):
            seeds = [r[metric] for r in run.get("runs", [])]
            if len(seeds) > 1:
                ax.plot([x] * len(seeds), seeds, ".", color="grey", alpha=0.6)
                ax.vlines(x, min(seeds), max(seeds), color="C0", alpha=0.5)
        for x, (value, run) in enumerate(zip(values, runs)):
            ax.annotate(f"{run['train_seconds']:.0f} s", (x, value), textcoords="offset points", xytext=(0, 6),
                        ha="center", fontsize=8)
        ax.set_xticks(range(len(runs)), labels)
        ax.set(title=setting, xlabel=setting, ylim=(0, 1.05))
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(metric.replace("_", " "))
    fig.tight_layout()
    return fig
