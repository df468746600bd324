"""course_lib.plots: the smoothing is right and every plot shows what it is given."""
import matplotlib

matplotlib.use("Agg")

from course_lib.plots import (moving_average, plot_accuracy, plot_confusion_matrices, plot_dpo_runs, plot_intervals,
                              plot_lora_sweep, plot_loss, plot_nf4_levels, plot_perplexity_vs_memory,
                              plot_reward_distributions, plot_shared_prefix_mask)


def test_moving_average_is_trailing():
    assert moving_average([2, 4, 6, 8], 2) == [2, 3, 5, 7]
    assert moving_average([1, 2, 3], 5) == [1, 1.5, 2]


def test_plots_show_their_data():
    ax = plot_loss([3.0, 2.0, 1.0]).axes[0]
    assert [list(line.get_ydata()) for line in ax.get_lines()] == [[3.0, 2.0, 1.0], [3.0, 2.5, 2.0]]
    ax = plot_loss([3.0, 2.0, 1.0], validation=([2, 3], [2.5, 1.8])).axes[0]
    assert list(ax.get_lines()[2].get_xdata()) == [2, 3] and list(ax.get_lines()[2].get_ydata()) == [2.5, 1.8]
    assert ax.get_legend_handles_labels()[1][-1] == "validation"
    fig = plot_accuracy(0.25, 0.9, chance=0.2)
    assert [t.get_text() for t in fig.axes[0].texts] == ["25%", "90%"]
    fig = plot_nf4_levels([0.1, -0.5, 0.9], [-1.0, 0.0, 1.0])
    assert len(fig.axes[0].get_lines()) == 3
    rows = {"fp32": {"perplexity": 19.0, "mb": 425.0}, "nf4": {"perplexity": 23.4, "mb": 59.7}}
    fig = plot_perplexity_vs_memory(rows)
    assert [t.get_text() for t in fig.axes[0].texts] == ["fp32", "nf4"]


def test_alignment_plots_show_their_data():
    fig = plot_dpo_runs({"ours": {"loss": [0.7, 0.4], "margin": [0.0, 1.5]}, "TRL": {"loss": [0.7, 0.5], "margin": [0.0, 1.0]}})
    loss_ax, margin_ax = fig.axes
    assert [list(line.get_ydata()) for line in loss_ax.get_lines()] == [[0.7, 0.4], [0.7, 0.5]]
    assert [list(line.get_ydata()) for line in margin_ax.get_lines()] == [[0.0, 1.5], [0.0, 1.0]]
    fig = plot_reward_distributions({"before": ([0.1, 0.2], [0.1, 0.3]), "after": ([3.0, 4.0, 5.0], [-2.0, -1.0, 0.0])})
    assert [ax.get_title() for ax in fig.axes] == ["before", "after"]
    chosen_counts = sum(p.get_height() for p in fig.axes[1].patches[:20])
    assert chosen_counts == 3
    # prompt (1 token), chosen (1), rejected (2): the rejected tokens see the prompt and each other, not the chosen
    mask = [[1, 0, 0, 0], [1, 1, 0, 0], [1, 0, 1, 0], [1, 0, 1, 1]]
    fig = plot_shared_prefix_mask([[bool(v) for v in row] for row in mask], [0, 1, 2, 2])
    pixels = fig.axes[0].images[0].get_array()
    assert [[tuple(pixels[q, k]) != (1.0, 1.0, 1.0) for k in range(4)] for q in range(4)] == [
        [bool(v) for v in row] for row in mask]
    assert tuple(pixels[3, 0]) != tuple(pixels[3, 2])  # prompt and rejected keys in different colours


def test_evaluation_plots_show_their_data():
    fig = plot_confusion_matrices({"base": [[3, 1], [0, 2]], "tuned": [[4, 0], [1, 1]]}, ["a", "b"])
    assert [ax.get_title() for ax in fig.axes] == ["base", "tuned"]
    assert [t.get_text() for t in fig.axes[1].texts] == ["4", "0", "1", "1"]
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["a", "b"]
    fig = plot_intervals({"A": (0.5, 0.4, 0.6), "B": (0.8, 0.7, 0.85)}, "accuracy")
    ax = fig.axes[0]
    assert [list(line.get_xdata()) for line in ax.get_lines()] == [[0.4, 0.6], [0.5], [0.7, 0.85], [0.8]]
    assert [t.get_text() for t in ax.texts] == ["0.500 [0.400, 0.600]", "0.800 [0.700, 0.850]"]


def test_lora_sweep_plot_shows_each_setting():
    run = lambda **kw: {"r": 8, "alpha": 16, "lr": 1e-3, "targets": ["q_proj", "v_proj"], "train_seconds": 80.0,
                        "validation_accuracy": 0.9, **kw}
    seeds = [{"validation_accuracy": a} for a in (0.4, 0.5, 0.6)]
    fig = plot_lora_sweep({"rank": [run(r=1, validation_accuracy=0.5, runs=seeds), run()],
                           "targets": [run(), run(targets=["q_proj", "k_proj", "v_proj"], train_seconds=150.0)]})
    rank_ax, targets_ax = fig.axes
    assert list(rank_ax.get_lines()[0].get_ydata()) == [0.5, 0.9]
    assert list(rank_ax.get_lines()[1].get_ydata()) == [0.4, 0.5, 0.6]  # each seed of rank 1, and only there
    assert len(rank_ax.get_lines()) == 2 and len(targets_ax.get_lines()) == 1
    (bar,) = rank_ax.collections  # the seeds' range
    assert [list(map(list, seg)) for seg in bar.get_segments()] == [[[0, 0.4], [0, 0.6]]]
    assert [t.get_text() for t in rank_ax.get_xticklabels()] == ["1", "8"]
    assert [t.get_text() for t in targets_ax.get_xticklabels()] == ["q_proj+v_proj", "all linear"]
    assert [t.get_text() for t in targets_ax.texts] == ["80 s", "150 s"]
