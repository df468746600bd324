"""course_lib.widgets: the rank explorer recomputes when its sliders move."""
from course_lib.memory import LLAMA2_7B, TransformerShape, lora_trainable
from course_lib.widgets import lora_rank_explorer, lora_summary


def test_summary_is_computed(tiny):
    model, _ = tiny
    shape = TransformerShape.from_config(model.config, name="tiny")
    s8, s16 = lora_summary(shape, 8, 16), lora_summary(shape, 16, 16)
    assert s16["trainable"] == 2 * s8["trainable"] == 2 * lora_trainable(shape, 8)
    assert s8["scaling"] == 2.0 and s16["scaling"] == 1.0
    assert s8["adapter_mb"] == s8["trainable"] * 4 / 1e6
    assert s8["llama7b_trainable"] == 4_194_304
    assert s8["llama7b_qlora_gb"] < s8["llama7b_lora_gb"] < s8["llama7b_full_gb"]


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
