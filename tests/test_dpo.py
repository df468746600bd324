"""course_lib.dpo against TRL's DPOTrainer and hand-computed values; the DPO loop and its reference."""
import math

import pytest
import torch
import torch.nn.functional as F

from course_lib import align, batching, dpo, sft
from course_lib.data import load_preferences
from course_lib.lora import inject_lora
from course_lib.training import TrainConfig


def test_dpo_loss_hand_computed_and_gradients_reach_the_policy_only():
    pc = torch.tensor([-10.0, -5.0], requires_grad=True)
    pr = torch.tensor([-12.0, -4.0], requires_grad=True)
    rc = torch.tensor([-11.0, -5.0], requires_grad=True)
    rr = torch.tensor([-11.0, -5.0], requires_grad=True)
    out = dpo.dpo_loss(pc, pr, rc, rr, beta=0.5)
    # h = (1 - (-1)) = 2 and (0 - 1) = -1  ->  -log sigmoid(1), -log sigmoid(-0.5)
    expected = (math.log1p(math.exp(-1.0)) + math.log1p(math.exp(0.5))) / 2
    assert out.loss.item() == pytest.approx(expected, rel=1e-6)
    assert out.chosen_rewards.tolist() == pytest.approx([0.5, 0.0])
    assert out.rejected_rewards.tolist() == pytest.approx([-0.5, 0.5])
    assert out.margins.tolist() == pytest.approx([1.0, -0.5]) and out.accuracy == 0.5
    out.loss.backward()
    assert rc.grad is None and rr.grad is None
    sig = torch.sigmoid(torch.tensor([-1.0, 0.5]))  # d/dh of -log sigmoid(beta h) = -beta sigmoid(-beta h)
    assert pc.grad.tolist() == pytest.approx((-0.5 * sig / 2).tolist(), rel=1e-6)
    assert pr.grad.tolist() == pytest.approx((0.5 * sig / 2).tolist(), rel=1e-6)


def test_conservative_dpo_and_ipo_hand_values():
    pc, pr, rc, rr = (torch.tensor([v]) for v in (-3.0, -6.0, -4.0, -5.0))  # h = 1 - (-1) = 2
    eps, beta = 0.2, 0.5
    cdpo = dpo.dpo_loss(pc, pr, rc, rr, beta=beta, label_smoothing=eps).loss.item()
    assert cdpo == pytest.approx(-(1 - eps) * F.logsigmoid(torch.tensor(1.0)).item()
                                 - eps * F.logsigmoid(torch.tensor(-1.0)).item(), rel=1e-6)
    ipo = dpo.dpo_loss(pc, pr, rc, rr, beta=beta, loss_type="ipo").loss.item()
    assert ipo == pytest.approx((2.0 - 1 / (2 * beta)) ** 2)
    with pytest.raises(ValueError, match="loss_type"):
        dpo.dpo_loss(pc, pr, rc, rr, loss_type="hinge?")
    with pytest.raises(ValueError, match="beta"):
        dpo.dpo_loss(pc, pr, rc, rr, beta=0.0)


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
def test_dpo_loss_equals_trl_dpotrainer_on_its_own_batch(tiny, tmp_path, loss_type):
    """Inside DPOTrainer, TRL computes policy and reference log-probs and then the loss. Fed the log-probs TRL
    computed, our loss equals TRL's within 1e-6 (and so do the logged implicit rewards); our own log-probs of
    the same batch agree with TRL's to float32 rounding."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from course_lib.models import tiny_model

    policy, tokenizer = tiny
    reference, _ = tiny_model(seed=1, tokenizer=tokenizer)
    rows = [{"prompt": align.chat(p["prompt"]), "chosen": [{"role": "assistant", "content": p["chosen"]}],
             "rejected": [{"role": "assistant", "content": p["rejected"]}]} for p in load_preferences("test")[:4]]
    config = DPOConfig(output_dir=str(tmp_path), beta=0.3, loss_type=[loss_type], per_device_train_batch_size=4,
                       use_cpu=True, bf16=False, gradient_checkpointing=False, report_to=[],
                       train_sampling_strategy="sequential", dataloader_num_workers=0)
    trainer = DPOTrainer(model=policy, ref_model=reference, args=config, processing_class=tokenizer,
                         train_dataset=Dataset.from_list(rows))
    captured = {}
    for name, module in (("policy", trainer.model), ("reference", trainer.ref_model)):
        module.register_forward_hook(lambda mod, args, out, name=name: captured.__setitem__(name, out.log_probs))
    batch = next(iter(trainer.get_train_dataloader()))
    with torch.no_grad():
        trl_loss = trainer._compute_loss(trainer.model, batch, return_outputs=False).item()
    mask = batch["completion_mask"][:, 1:]
    assert all((logps[:, -mask.shape[1]:][mask == 0] == 0).all() for logps in captured.values())  # reply tokens only
    length = batch["completion_mask"].sum(1).float() if loss_type == "ipo" else 1.0  # TRL's IPO: per-token mean
    trl_logps = {name: logps[:, -mask.shape[1]:].sum(1) / length for name, logps in captured.items()}
    out = dpo.dpo_loss(*trl_logps["policy"].chunk(2), *trl_logps["reference"].chunk(2), beta=0.3, loss_type=loss_type)
    assert out.loss.item() == pytest.approx(trl_loss, abs=1e-6)
    if loss_type == "sigmoid":
        logged = trainer._metrics["train" if trainer.model.training else "eval"]
        assert out.chosen_rewards.mean().item() == pytest.approx(logged["rewards/chosen"][-1], abs=1e-6)
        assert out.rejected_rewards.mean().item() == pytest.approx(logged["rewards/rejected"][-1], abs=1e-6)
        assert out.margins.mean().item() == pytest.approx(logged["rewards/margins"][-1], abs=1e-6)
        assert out.accuracy == pytest.approx(logged["rewards/accuracies"][-1])
    ours = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
            "labels": batch["input_ids"].masked_fill(batch["completion_mask"] == 0, batching.IGNORE_INDEX)}
    with torch.no_grad():
        for name, model in (("policy", policy), ("reference", reference)):
            mine = align.sequence_logprobs(model, ours, average=loss_type == "ipo")
            assert torch.allclose(mine, trl_logps[name], rtol=1e-5, atol=1e-5), name


def test_train_dpo_moves_only_the_adapters_and_separates_the_pairs(tiny):
    model, tokenizer = tiny
    pairs = load_preferences("train")[:8]
    inject_lora(model, r=4, alpha=8)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    history = dpo.train_dpo(model, tokenizer, pairs, TrainConfig(steps=12, batch_size=4, lr=5e-3), beta=0.5,
                            progress=False)
    assert history["loss"][0] == pytest.approx(math.log(2), abs=1e-5)  # policy == reference at the start
    assert history["margin"][0] == pytest.approx(0.0, abs=1e-5)
    assert history["loss"][-1] < 0.5 * math.log(2) and history["margin"][-1] > 0.5
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    with pytest.raises(ValueError, match="no trainable parameters"):
        dpo.train_dpo(tiny_frozen(tokenizer), tokenizer, pairs, TrainConfig(steps=1), progress=False)


def test_train_dpo_in_bf16_starts_from_its_reference_and_learns(tiny):
    """The reference log-probs are computed in the training's precision: at the first step the policy equals
    the reference (margin 0 up to batch-shape rounding), and the pairs separate as in fp32."""
    model, tokenizer = tiny
    pairs = load_preferences("train")[:8]
    inject_lora(model, r=4, alpha=8)
    history = dpo.train_dpo(model, tokenizer, pairs, TrainConfig(steps=12, batch_size=4, lr=5e-3, precision="bf16"),
                            beta=0.5, progress=False)
    assert history["margin"][0] == pytest.approx(0.0, abs=2e-4)  # a fp32 reference is off by 1.3e-3 here
    assert history["loss"][0] == pytest.approx(math.log(2), abs=1e-4)
    assert history["loss"][-1] < 0.5 * math.log(2) and history["margin"][-1] > 0.5


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
def test_train_dpo_called_again_keeps_the_frozen_base_as_reference(tiny, loss_type):
    """A second call (a learner adding steps) must compare the policy with the base model, not with the
    half-trained policy: its first loss equals dpo_loss against a separate copy of the base. For IPO the
    log-probs are per-token means, as TRL computes them."""
    from course_lib.models import tiny_model

    model, tokenizer = tiny
    pairs = load_preferences("train")[:4]
    inject_lora(model, r=4, alpha=8)
    dpo.train_dpo(model, tokenizer, pairs, TrainConfig(steps=6, batch_size=4, lr=5e-3), beta=0.5, progress=False,
                  loss_type=loss_type)
    again = dpo.train_dpo(model, tokenizer, pairs, TrainConfig(steps=1, batch_size=4, lr=0.0), beta=0.5,
                          progress=False, loss_type=loss_type)
    base, _ = tiny_model(seed=0, tokenizer=tokenizer)
    average = loss_type == "ipo"
    ordered = [pairs[i] for i in batching.batch_indices(len(pairs), 1, 4)[0]]
    with torch.no_grad():
        expected = dpo.dpo_loss(*dpo.pair_logprobs(model, tokenizer, ordered, progress=False, average=average),
                                  *dpo.pair_logprobs(base, tokenizer, ordered, progress=False, average=average),
                                  beta=0.5, loss_type=loss_type)
    assert abs(again["margin"][0]) > 0.01  # the policy has moved away from the reference
    assert again["loss"][0] == pytest.approx(expected.loss.item(), rel=1e-4)
    assert again["margin"][0] == pytest.approx(expected.margins.mean().item(), rel=1e-4)


def tiny_frozen(tokenizer):
    from course_lib.models import tiny_model

    model, _ = tiny_model(seed=2, tokenizer=tokenizer)
    return model.requires_grad_(False)


@pytest.mark.parametrize("average", [False, True])
def test_pair_logprobs_do_not_depend_on_batching(tiny, average):
    """Batches are cut from the replies sorted by length; each pair's log-probs equal its own batch's, in order."""
    model, tokenizer = tiny
    pairs = load_preferences("train")[:5]
    alone = [align.sequence_logprobs(model, dpo.preference_batch(tokenizer, [p]), average) for p in pairs]
    want_c, want_r = torch.stack([a[0] for a in alone]), torch.stack([a[1] for a in alone])
    assert not torch.allclose(want_c, want_r)
    for batch_size in (1, 2, 16):
        chosen, rejected = dpo.pair_logprobs(model, tokenizer, pairs, batch_size=batch_size, progress=False,
                                             average=average)
        assert chosen.shape == rejected.shape == (5,)
        torch.testing.assert_close(chosen, want_c.detach(), atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(rejected, want_r.detach(), atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_shared_prefix_gives_the_two_sequences_log_probs_and_gradients(tiny, attention):
    """Prompt + chosen + rejected in one sequence (the rejected reply masked from the chosen one, its positions
    restarted) gives each reply's log-prob, per-token mean and gradient as its own sequence does, with the prompt
    computed once."""
    model, tokenizer = tiny
    model.config._attn_implementation = attention
    inject_lora(model, r=4, alpha=8)
    for name, param in model.named_parameters():
        if "lora_B" in name:  # adapters that change the outputs, so the gradients reach both factors
            torch.nn.init.normal_(param, std=0.1)
    pairs = load_preferences("train")[:5]
    examples = [dpo.shared_prefix_example(tokenizer, p) for p in pairs]
    for pair, example in zip(pairs, examples):
        prompt = sft.render_chat(tokenizer, align.chat(pair["prompt"]), True)
        assert example["input_ids"][:len(prompt)] == prompt  # shared once, then chosen and rejected
        assert len(example["input_ids"]) == sum(len(ids) for ids, _ in dpo.preference_examples(tokenizer, [pair])) \
            - len(prompt)
    batch = dpo.shared_prefix_batch(examples, tokenizer.pad_token_id)
    params = [p for p in model.parameters() if p.requires_grad]
    for average in (False, True):
        separate_c, separate_r = align.sequence_logprobs(model, dpo.preference_batch(tokenizer, pairs),
                                                         average).chunk(2)
        shared_c, shared_r = dpo.shared_prefix_logprobs(model, batch, average)
        torch.testing.assert_close(shared_c, separate_c, atol=1e-4 if not average else 1e-5, rtol=1e-6)
        torch.testing.assert_close(shared_r, separate_r, atol=1e-4 if not average else 1e-5, rtol=1e-6)
        want = torch.autograd.grad((separate_c - 0.5 * separate_r).sum(), params)
        got = torch.autograd.grad((shared_c - 0.5 * shared_r).sum(), params)
        for w, g in zip(want, got):
            torch.testing.assert_close(g, w, atol=1e-6, rtol=1e-4)


def test_shared_prefix_refuses_attention_without_custom_masks(tiny):
    model, tokenizer = tiny
    model.config._attn_implementation = "flash_attention_2"
    batch = dpo.shared_prefix_batch([dpo.shared_prefix_example(tokenizer, load_preferences("train")[0])],
                                    tokenizer.pad_token_id)
    with pytest.raises(ValueError, match="attn_implementation='sdpa'"):
        dpo.shared_prefix_logprobs(model, batch)


def test_train_dpo_accumulating_two_micro_batches_equals_one_batch(tiny):
    """DPO takes the whole TrainConfig: two micro-batches of 2 pairs take the steps one batch of 4 takes."""
    model, tokenizer = tiny
    pairs = load_preferences("train")[:8]
    torch.manual_seed(0)
    inject_lora(model, r=4, alpha=8)
    trainable = [p for p in model.parameters() if p.requires_grad]
    start = [p.detach().clone() for p in trainable]
    runs = []
    for accumulation in (1, 2):
        with torch.no_grad():
            for p, saved in zip(trainable, start):
                p.copy_(saved)
        history = dpo.train_dpo(model, tokenizer, pairs,
                                TrainConfig(steps=2, batch_size=4, lr=1e-2, accumulation=accumulation),
                                beta=0.5, progress=False)
        runs.append((history["loss"], [p.detach().clone() for p in trainable]))
    (big_loss, big), (small_loss, small) = runs
    assert len(big_loss) == len(small_loss) == 2
    assert small_loss == pytest.approx(big_loss, abs=1e-5)
    assert all(torch.allclose(a, b, atol=1e-5, rtol=0) for a, b in zip(big, small))
    assert any(not torch.equal(a, b) for a, b in zip(big, start))
