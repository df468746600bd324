"""course_lib.training: the one loop: accumulation equals a big batch, the schedule's values, the best checkpoint
comes back, early stopping stops, and SFT trains exactly as the plain loop it replaced."""
import math

import pytest
import torch

from course_lib import batching, classify, lora, sft
from course_lib.models import tiny_model
from course_lib.training import TrainConfig, lr_at, train


def _examples(tokenizer, n=16):
    texts = [f"ticket number {i} about my order" for i in range(n)]
    labels = ["delivery", "payment", "account", "feedback"]
    return [classify.encode_example(tokenizer, t, labels[i % 4]) for i, t in enumerate(texts)]


def _adapted(tiny, seed=0):
    model, tokenizer = tiny
    torch.manual_seed(seed)
    lora.inject_lora(model, r=4, alpha=8)
    for _, layer in lora.lora_layers(model):  # non-zero B, so every step changes the loss
        torch.nn.init.normal_(layer.lora_B, std=0.02)
    return model, tokenizer


def _state(model):
    return [p.detach().clone() for p in model.parameters() if p.requires_grad]


def _restore(model, state):
    with torch.no_grad():
        for p, saved in zip((p for p in model.parameters() if p.requires_grad), state):
            p.copy_(saved)


def test_accumulating_four_micro_batches_equals_one_big_batch(tiny):
    model, tokenizer = _adapted(tiny)
    examples = _examples(tokenizer)  # every example has two answer tokens: equal weights per micro-batch
    start = _state(model)
    big = [batching.collate(examples[:8], tokenizer.pad_token_id)]
    small = [batching.collate(examples[i:i + 2], tokenizer.pad_token_id) for i in range(0, 8, 2)]
    loss = lambda batch: (sft.answer_loss(model, batch), {})
    train(model, big, loss, TrainConfig(steps=1, lr=1e-2), progress=False)
    after_big = _state(model)
    _restore(model, start)
    history = train(model, small, loss, TrainConfig(steps=1, lr=1e-2, accumulation=4), progress=False)
    for a, b in zip(after_big, _state(model)):
        assert torch.allclose(a, b, atol=1e-6, rtol=0)
    assert len(history["loss"]) == 1


def test_schedule_values():
    cfg = TrainConfig(steps=10, lr=1.0, warmup_steps=2, schedule="cosine")
    assert [lr_at(s, cfg) for s in (0, 1)] == [0.5, 1.0]
    assert lr_at(2, cfg) == 1.0 and lr_at(6, cfg) == pytest.approx(0.5) and lr_at(9, cfg) == pytest.approx(
        0.5 * (1 + math.cos(math.pi * 7 / 8)))
    linear = TrainConfig(steps=5, lr=2.0, schedule="linear")
    assert [lr_at(s, linear) for s in range(5)] == pytest.approx([2.0, 1.6, 1.2, 0.8, 0.4])
    assert [lr_at(s, TrainConfig(steps=3, lr=0.1)) for s in range(3)] == [0.1, 0.1, 0.1]
    with pytest.raises(ValueError, match="schedule"):
        TrainConfig(steps=3, schedule="step")


def test_best_checkpoint_is_restored_and_early_stopping_stops(tiny):
    model, tokenizer = _adapted(tiny)
    batches = [batching.collate(_examples(tokenizer)[:4], tokenizer.pad_token_id)] * 12
    scores = iter([0.5, 0.9, 0.7, 0.6, 0.95, 0.4])  # the validation metric after each evaluation (higher is better)
    saved = {}

    def evaluate():
        value = next(scores)
        saved[value] = _state(model)
        return {"accuracy": value}

    history = train(model, batches, lambda b: (sft.answer_loss(model, b), {"tokens": 2.0}),
                    TrainConfig(steps=12, lr=5e-2, eval_every=2, monitor="accuracy", mode="max", patience=2),
                    evaluate=evaluate, progress=False)
    # evaluations after steps 2, 4, 6, 8: 0.5, 0.9 (best), 0.7, 0.6 -> two without improvement: stop
    assert history["eval_step"] == [2, 4, 6, 8] and history["eval_accuracy"] == [0.5, 0.9, 0.7, 0.6]
    assert history["stopped_early"] and history["best_step"] == 4 and len(history["loss"]) == 8
    assert history["tokens"] == [2.0] * 8
    for a, b in zip(saved[0.9], _state(model)):  # the weights the model ends with are the best evaluation's
        assert torch.equal(a, b)
    assert not model.training


def test_sft_trains_exactly_as_the_plain_loop_it_replaced(tiny):
    model, tokenizer = _adapted(tiny)
    examples = _examples(tokenizer)
    reference = _adapted(tiny_model(seed=0))[0]
    # the plain loop: AdamW, one seeded shuffle read cyclically, answer-only loss
    params = [p for p in reference.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.0)
    losses = []
    for idx in batching.batch_indices(len(examples), 5, 4, seed=0):
        loss = sft.answer_loss(reference, batching.collate([examples[i] for i in idx], tokenizer.pad_token_id))
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    history = sft.train_sft(model, examples, tokenizer.pad_token_id, TrainConfig(steps=5, batch_size=4, lr=1e-2),
                            progress=False)
    assert history["loss"] == pytest.approx(losses, abs=1e-6)
    for a, b in zip(_state(reference), _state(model)):
        assert torch.allclose(a, b, atol=1e-6)


def test_bf16_steps_see_every_update_and_track_fp32(tiny):
    """Mixed precision per micro-batch: each forward pass uses the weights the last step wrote (an autocast block
    around the whole loop would keep its first bf16 copies and the loss on a repeated batch would not move),
    and the run stays within bf16's rounding of the fp32 run."""
    model, tokenizer = _adapted(tiny)
    start = _state(model)
    batch = batching.collate(_examples(tokenizer)[:8], tokenizer.pad_token_id)
    loss = lambda b: (sft.answer_loss(model, b), {})
    runs = {}
    for precision in ("fp32", "bf16"):
        _restore(model, start)
        runs[precision] = train(model, [batch] * 6, loss, TrainConfig(steps=6, lr=1e-2, precision=precision),
                                progress=False)["loss"]
        assert all(p.dtype == torch.float32 for p in model.parameters())
    assert runs["bf16"][-1] < runs["bf16"][0] - 0.1 and runs["fp32"][-1] < runs["fp32"][0] - 0.1
    assert runs["bf16"] != runs["fp32"]  # bf16 really ran
    assert runs["bf16"] == pytest.approx(runs["fp32"], rel=0.03)


def test_bad_settings_are_refused(tiny):
    model, _ = tiny
    with pytest.raises(ValueError, match="no trainable parameters"):
        train(model.requires_grad_(False), [None], lambda b: (None, {}), TrainConfig(steps=1), progress=False)
    model, tokenizer = _adapted(tiny)
    with pytest.raises(ValueError, match="need 6 batches, got 2"):
        train(model, [None, None], lambda b: (None, {}), TrainConfig(steps=3, accumulation=2), progress=False)
    with pytest.raises(ValueError, match="precision must be one of"):
        TrainConfig(steps=1, precision="fp16")


@pytest.mark.slow
def test_two_processes_train_the_ticket_adapter_as_one_does(tmp_path):
    # torchrun starts two CPU processes; accelerate sets up gloo and averages the gradients. Tolerance: the same
    # losses to 1e-4, the same adapter to 1e-3 in relative norm (summation order differs; Adam turns rounding
    # noise in near-zero gradients into updates of size lr in single elements).
    import json
    import subprocess
    import sys
    from pathlib import Path

    from safetensors.torch import load_file

    root = Path(__file__).resolve().parents[1]
    script = str(root / "scripts" / "tools" / "train_distributed.py")
    env = {**__import__("os").environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, script, str(tmp_path / "one"), "--steps", "6"], check=True, env=env,
                   capture_output=True, cwd=root)
    subprocess.run([str(Path(sys.executable).with_name("torchrun")), "--nproc_per_node", "2", script,
                    str(tmp_path / "two"), "--steps", "6"], check=True, env=env, capture_output=True, cwd=root)
    one, two = (json.loads((tmp_path / d / "history.json").read_text()) for d in ("one", "two"))
    assert (one["processes"], two["processes"]) == (1, 2)
    assert two["loss"] == pytest.approx(one["loss"], abs=1e-4)
    a, b = (load_file(tmp_path / d / "adapter_model.safetensors") for d in ("one", "two"))
    assert set(a) == set(b)
    difference = sum(((a[k] - b[k]) ** 2).sum() for k in a) ** 0.5
    assert difference / sum((a[k] ** 2).sum() for k in a) ** 0.5 < 1e-3


def test_each_process_takes_its_share_of_every_batch(tiny):
    class Accelerator:  # what train_sft asks of accelerate's Accelerator, for process 1 of 2
        num_processes, process_index = 2, 1

        def reduce(self, tensor, reduction):
            return tensor

    model, tokenizer = _adapted(tiny)
    examples = _examples(tokenizer)
    seen = []
    answer_loss = sft.answer_loss
    try:
        sft.answer_loss = lambda m, batch: (seen.append(batch["input_ids"].shape[0]), answer_loss(m, batch))[1]
        sft.train_sft(model, examples, tokenizer.pad_token_id, TrainConfig(steps=2, batch_size=4, accumulation=2),
                      accelerator=Accelerator(), progress=False)
    finally:
        sft.answer_loss = answer_loss
    assert seen == [1, 1, 1, 1]  # micro-batches of 2, one example each for this process
    with pytest.raises(ValueError, match="do not split over 2 processes"):
        sft.train_sft(model, examples, tokenizer.pad_token_id, TrainConfig(steps=1, batch_size=3),
                      accelerator=Accelerator(), progress=False)


def test_config_draws_whole_batches_split_into_micro_batches():
    one, split = TrainConfig(steps=3, batch_size=4, seed=1), TrainConfig(steps=3, batch_size=4, seed=1, accumulation=2)
    batches, micro = one.micro_batches(10), split.micro_batches(10)
    assert [len(b) for b in batches] == [4, 4, 4] and [len(m) for m in micro] == [2] * 6
    assert [i for b in batches for i in b] == [i for m in micro for i in m]  # the same examples in the same order
    assert batches != TrainConfig(steps=3, batch_size=4, seed=2).micro_batches(10)
    with pytest.raises(ValueError, match="batch_size 6 is not a multiple of accumulation 4"):
        TrainConfig(steps=1, batch_size=6, accumulation=4)
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(steps=1, batch_size=0)
