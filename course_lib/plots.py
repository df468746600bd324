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


def plot_loss(losses: Sequence[float], title: str = "Training loss", window: int = 5, ax=None):
    """Loss per step (faint) and its moving average; returns the figure."""
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.5))
    steps = range(1, len(losses) + 1)
    ax.plot(steps, losses, alpha=0.35, label="per step")
    ax.plot(steps, moving_average(losses, window), label=f"mean of last {window}")
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
