"""course_lib.widgets: the explorers recompute when their controls move."""
import pytest

from course_lib.memory import LLAMA2_7B, TransformerShape, lora_trainable
from course_lib.metrics import win_rate
from course_lib.widgets import BlindComparison, lora_rank_explorer


def test_sliders_update_the_table(tiny):
    model, _ = tiny
    shape = TransformerShape.from_config(model.config, name="tiny")
    box = lora_rank_explorer(shape, r=8, alpha=16)
    rank, alpha, table = box.children
    before = table.value
    assert f"{lora_trainable(shape, 8):,}" in before and f"{lora_trainable(LLAMA2_7B, 8):,}" in before
    rank.value = 64
    assert table.value != before and f"{lora_trainable(shape, 64):,}" in table.value
    assert f"{lora_trainable(LLAMA2_7B, 64):,}" in table.value
    alpha.value = 128
    assert "<b>2</b>" in table.value  # scaling 128 / 64
    assert "measured" not in table.value


def test_rank_slider_shows_the_measured_run_at_that_rank(tiny):
    model, _ = tiny
    shape = TransformerShape.from_config(model.config, name="tiny")
    spread = {"n": 3, "mean": 0.9, "sd": 0.03, "min": 0.867, "max": 0.933}
    measured = {8: {"validation_accuracy": 0.911, "train_seconds": 80.4},
                64: {"validation_accuracy": 0.9, "train_seconds": 95, "validation_accuracy_spread": spread}}
    rank, _, table = lora_rank_explorer(shape, r=8, alpha=16, measured=measured).children
    assert "validation accuracy 91.1%, training 80 s" in table.value
    rank.value = 12
    assert "not measured at this rank (measured: 8, 64)" in table.value
    rank.value = 64
    assert "validation accuracy 90.0% (mean of 3 seeds, 86.7% to 93.3%), training 95 s" in table.value


def test_bitwidth_explorer_recomputes(monkeypatch):
    import torch
    from course_lib import widgets as course_widgets
    w = torch.randn(64, 256, generator=torch.Generator().manual_seed(0)) * 0.02
    cache = {f"{b}bit-{k}": 10.0 + b for b in range(2, 9) for k in (32, 64, 128, 256, "row")}
    seen = []
    monkeypatch.setattr(course_widgets, "quantization_snr_db", lambda a, b: seen.append(b) or 1.0)
    box = course_widgets.bitwidth_explorer(w, "test", cache, n_params=1000)
    (bits, block), _ = box.children[0].children, box.children[1]
    bits.value = 8
    block.value = None
    assert len(seen) == 3
    assert (seen[1] - w).abs().max() < (seen[0] - w).abs().max()  # 8 bits beat 4 bits
    assert not torch.equal(seen[1], seen[2])  # per-row scale differs from blocks of 64


def test_the_decision_explorer_follows_the_controls(monkeypatch):
    import matplotlib
    matplotlib.use("Agg")
    from course_lib.decision import CostModel
    from course_lib.widgets import decision_explorer

    cost = CostModel()
    box = decision_explorer(cost)
    (examples, _, prompt), (fresh, _) = box.children[0].children, box.children[1].children
    sheet, *prices = box.children[2].children
    verdict = box.children[3]
    assert sheet.value == "GPT-3.5 Turbo, Aug 2023" and [p.value for p in prices] == [0.008, 0.012, 0.0015]
    assert verdict.value.startswith("<b>fine-tuning</b>") and "pays for itself above" in verdict.value
    fresh.value = True
    assert verdict.value.startswith("<b>RAG</b>")
    fresh.value, examples.value = False, 20
    assert verdict.value.startswith("<b>prompt engineering</b>") and "fewer than 50" in verdict.value
    prompt.value = 200  # a short prompt on the base model is cheaper per request than the fine-tune
    assert "never pays for itself" in verdict.value
    sheet.value = "GPT-4o mini, Jul 2024"  # the fine-tuned model's tokens cost 2x, not 8x: the verdict flips
    assert [p.value for p in prices] == [0.003, 0.0003, 0.00015] and sheet.value == "GPT-4o mini, Jul 2024"
    training = 20 * 100 * 3 / 1000 * 0.003
    even = training / 12 / (200 / 1000 * 0.00015 - 60 / 1000 * 0.0003)
    assert f"pays for itself above {even:,.0f} requests/month" in verdict.value
    prices[1].value = 0.0006  # typed over the sheet: the sheet says so, and the break-even moves
    assert sheet.value == "(typed in)" and "never pays for itself" in verdict.value
    assert decision_explorer(CostModel(0.1, 0.2, 0.3)).children[2].children[0].value == "(typed in)"


def test_blind_comparison_hides_sides_and_unblinds_ratings():
    prompts = [f"ticket {i}" for i in range(40)]
    base = [f"base reply {i}" for i in range(40)]
    tuned = [f"tuned reply {i}" for i in range(40)]
    panel = BlindComparison(prompts, base, tuned, names=("base", "fine-tuned"), seed=3)
    assert 10 < sum(panel.b_on_left) < 30  # sides are shuffled per item
    assert BlindComparison(prompts, base, tuned, seed=3).b_on_left == panel.b_on_left
    assert "tuned" not in panel.buttons[0].description and "base" not in panel.buttons[0].description
    # rate every item by clicking the side that shows the tuned reply, except three ties and two wins for base
    for i in range(40):
        page = panel._page.value
        assert f"Pair {i + 1} of 40" in page and f"ticket {i}" in page
        tuned_left = page.index(f"tuned reply {i}") < page.index(f"base reply {i}")
        assert tuned_left == panel.b_on_left[i]
        if i < 3:
            panel.buttons[2].click()
        elif i < 5:
            panel.buttons[1 if tuned_left else 0].click()
        else:
            panel.buttons[0 if tuned_left else 1].click()
    assert all(b.disabled for b in panel.buttons) and "All 40 pairs rated" in panel._page.value
    with pytest.raises(ValueError, match="every item is rated"):
        panel.rate("left")
    metric_base, metric_tuned = [0.2] * 40, [0.5] * 40
    metric_base[10] = 0.9  # the metric disagrees with the rater here and on the two base wins; equal scores are left out
    metric_tuned[11] = metric_base[11]
    r = panel.results(metric_base, metric_tuned)
    assert (r["rated"], r["wins"], r["losses"], r["ties"]) == (40, 35, 2, 3)
    assert (r["win_rate"], r["low"], r["high"]) == pytest.approx(win_rate(35, 2, 3))
    assert r["metric_compared"] == 36 and r["metric_agreement"] == pytest.approx(33 / 36)


def test_blind_comparison_checks_its_input():
    with pytest.raises(ValueError, match="as many outputs"):
        BlindComparison(["a", "b"], ["x"], ["y", "z"])
    panel = BlindComparison(["a <b>"], ["<script>x</script>"], ["y"])
    assert "<script>" not in panel._page.value and "&lt;script&gt;" in panel._page.value
    with pytest.raises(ValueError, match="no pair is rated"):
        panel.results()
    with pytest.raises(ValueError, match="choice"):
        panel.rate("A")
