"""course_lib.align against TRL (SFT assistant mask, DPO loss) and against hand-computed values."""
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from course_lib import align
from course_lib.data import load_preferences
from course_lib.lora import inject_lora

TAGGED_TEMPLATE = Path(__file__).parent / "data" / "smollm2_generation.jinja"
CHATS = [
    [{"role": "user", "content": "Where is my parcel?"},
     {"role": "assistant", "content": "It ships tomorrow."}],
    [{"role": "system", "content": "You are terse."},
     {"role": "user", "content": "Hi"},
     {"role": "assistant", "content": "Hello."},
     {"role": "user", "content": "Refund order #12, please."},
     {"role": "assistant", "content": "Done: the refund of $12.99 is on its way."}],
]


# --- house style and data --------------------------------------------------------------------------------------

def test_house_style_accepts_every_chosen_reply_and_rejects_every_rejected_one():
    for split in ("train", "test"):
        for pair in load_preferences(split):
            assert align.follows_house_style(pair["chosen"]), pair["id"]
            broken = {rule for rule, ok in align.house_style(pair["rejected"]).items() if not ok}
            expected = {"plain": "greeting", "verbose": "concise", "credentials": "no_credentials",
                        "curt": "greeting"}[pair["rejected_kind"]]
            assert expected in broken, (pair["id"], broken)


def test_house_style_rules_each_catch_their_fault():
    good = f"{align.GREETING} Your refund was issued today to your original card. {align.SIGN_OFF}"
    assert align.house_style(good) == dict.fromkeys(("greeting", "answers", "concise", "no_credentials", "sign_off"),
                                                    True)
    assert not align.house_style(f"{align.GREETING} {align.SIGN_OFF}")["answers"]
    assert not align.house_style(good.replace("Hi,", "Hello,"))["greeting"]
    assert not align.house_style(good + " Bye")["sign_off"]
    assert not align.house_style(good.replace("today", "today " + "really " * 60))["concise"]
    assert not align.house_style(good.replace("to your original card", "once you send your PIN code"))[
        "no_credentials"]
    assert align.house_style(good.replace("today", "today; change your password under Settings"))["no_credentials"]
    report = align.style_report([good, f"{align.GREETING} {align.SIGN_OFF}"])
    assert report["compliant"] == 0.5 and report["greeting"] == 1.0 and report["answers"] == 0.5


# --- SFT: assistant-only labels --------------------------------------------------------------------------------

def test_sft_labels_cover_exactly_each_reply_and_its_end_of_turn(tiny):
    _, tokenizer = tiny
    ids, labels = align.sft_example(tokenizer, CHATS[1])
    assert len(ids) == len(labels)
    trained = [i for i, lab in zip(ids, labels) if lab != align.IGNORE_INDEX]
    assert all(lab in (align.IGNORE_INDEX, i) for i, lab in zip(ids, labels))
    expected = (tokenizer.encode("Hello.<|im_end|>", add_special_tokens=False)
                + tokenizer.encode("Done: the refund of $12.99 is on its way.<|im_end|>", add_special_tokens=False))
    assert trained == expected
    # the two turns are separate runs: the user turn between them is masked
    runs = sum(1 for a, b in zip([align.IGNORE_INDEX] + labels, labels)
               if a == align.IGNORE_INDEX and b != align.IGNORE_INDEX)
    assert runs == 2


@pytest.mark.parametrize("max_length", [None, 30, 45])
def test_sft_labels_equal_trl_assistant_only_loss(tiny, tmp_path, max_length):
    """TRL's SFT path (assistant_only_loss with a {% generation %}-tagged copy of SmolLM2's template) masks
    the same tokens, multi-turn and truncated chats included."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    model, tokenizer = tiny
    for chat in CHATS:  # the tagged copy renders exactly like the model's own template
        assert (tokenizer.apply_chat_template(chat, tokenize=False)
                == tokenizer.apply_chat_template(chat, tokenize=False, chat_template=TAGGED_TEMPLATE.read_text()))
    config = SFTConfig(output_dir=str(tmp_path), assistant_only_loss=True, chat_template_path=str(TAGGED_TEMPLATE),
                       max_length=max_length, per_device_train_batch_size=len(CHATS), use_cpu=True, bf16=False,
                       report_to=[], train_sampling_strategy="sequential", dataloader_num_workers=0)
    trainer = SFTTrainer(model=model, args=config, processing_class=tokenizer,
                         train_dataset=Dataset.from_list([{"messages": c} for c in CHATS]))
    batch = next(iter(trainer.get_train_dataloader()))
    ours = [align.sft_example(tokenizer, chat, max_length=max_length) for chat in CHATS]
    # TRL drops examples whose reply was cut off entirely (nothing left to train on)
    kept = [(ids, labels) for ids, labels in ours if any(lab != align.IGNORE_INDEX for lab in labels)]
    assert len(kept) == len(batch["input_ids"]) and (max_length != 30 or len(kept) == 1)
    for row, (ids, labels) in enumerate(kept):
        n = len(ids)
        assert batch["input_ids"][row, :n].tolist() == ids
        assert batch["labels"][row, :n].tolist() == labels
        assert (batch["labels"][row, n:] == align.IGNORE_INDEX).all()


def test_sft_example_refuses_a_chat_without_reply(tiny):
    with pytest.raises(ValueError, match="no assistant turn"):
        align.sft_example(tiny[1], CHATS[0][:1])


# --- log-probabilities ----------------------------------------------------------------------------------------

def _batch(tokenizer, texts_and_replies):
    return align.sft_batch([align.sft_example(tokenizer, align.chat(p, r)) for p, r in texts_and_replies],
                           tokenizer.pad_token_id)


def test_sequence_logprobs_equal_a_token_by_token_sum(tiny):
    model, tokenizer = tiny
    batch = _batch(tokenizer, [("my card was charged twice", "Refunded."), ("hi", "Hello there, how can I help?")])
    with torch.no_grad():
        fast = align.sequence_logprobs(model, batch)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        mean = align.sequence_logprobs(model, batch, average=True)
    expected = []
    for row in range(2):
        total, count = 0.0, 0
        for t in range(1, batch["labels"].shape[1]):
            target = batch["labels"][row, t].item()
            if target != align.IGNORE_INDEX:
                total += torch.log_softmax(logits[row, t - 1].double(), -1)[target].item()
                count += 1
        expected.append((total, count))
    assert torch.allclose(fast.double(), torch.tensor([e[0] for e in expected], dtype=torch.float64), atol=1e-4)
    assert torch.allclose(align.logprobs_from_logits(logits, batch["labels"]), fast, atol=1e-4)
    assert torch.allclose(mean.double(), torch.tensor([t / c for t, c in expected], dtype=torch.float64), atol=1e-5)


# --- Bradley-Terry ---------------------------------------------------------------------------------------------

def test_bradley_terry_loss_hand_values_and_stability():
    chosen, rejected = torch.tensor([2.0, 0.0, -1000.0]), torch.tensor([1.0, 0.0, 1000.0])
    loss = align.bradley_terry_loss(chosen, rejected)
    expected = (math.log1p(math.exp(-1.0)) + math.log(2.0) + 2000.0) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert align.bradley_terry_loss(torch.tensor([5.0]), torch.tensor([1.0])).item() < math.log(2) < \
        align.bradley_terry_loss(torch.tensor([1.0]), torch.tensor([5.0])).item()


@pytest.mark.slow
def test_reward_model_learns_the_house_style_from_pairs():
    train, test = load_preferences("train"), load_preferences("test")
    model = align.load_reward_model(seed=0)
    before = align.pairwise_accuracy(model, test)
    history = align.train_reward_model(model, train, steps=12, batch_size=8, progress=False)
    after = align.pairwise_accuracy(model, test)
    assert history["loss"][-1] < history["loss"][0]
    assert after >= 0.95 and after > before


# --- DPO -------------------------------------------------------------------------------------------------------

def test_dpo_loss_hand_computed_and_gradients_reach_the_policy_only():
    pc = torch.tensor([-10.0, -5.0], requires_grad=True)
    pr = torch.tensor([-12.0, -4.0], requires_grad=True)
    rc = torch.tensor([-11.0, -5.0], requires_grad=True)
    rr = torch.tensor([-11.0, -5.0], requires_grad=True)
    out = align.dpo_loss(pc, pr, rc, rr, beta=0.5)
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
    cdpo = align.dpo_loss(pc, pr, rc, rr, beta=beta, label_smoothing=eps).loss.item()
    assert cdpo == pytest.approx(-(1 - eps) * F.logsigmoid(torch.tensor(1.0)).item()
                                 - eps * F.logsigmoid(torch.tensor(-1.0)).item(), rel=1e-6)
    ipo = align.dpo_loss(pc, pr, rc, rr, beta=beta, loss_type="ipo").loss.item()
    assert ipo == pytest.approx((2.0 - 1 / (2 * beta)) ** 2)
    with pytest.raises(ValueError, match="loss_type"):
        align.dpo_loss(pc, pr, rc, rr, loss_type="hinge?")
    with pytest.raises(ValueError, match="beta"):
        align.dpo_loss(pc, pr, rc, rr, beta=0.0)


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
    out = align.dpo_loss(*trl_logps["policy"].chunk(2), *trl_logps["reference"].chunk(2), beta=0.3, loss_type=loss_type)
    assert out.loss.item() == pytest.approx(trl_loss, abs=1e-6)
    if loss_type == "sigmoid":
        logged = trainer._metrics["train" if trainer.model.training else "eval"]
        assert out.chosen_rewards.mean().item() == pytest.approx(logged["rewards/chosen"][-1], abs=1e-6)
        assert out.rejected_rewards.mean().item() == pytest.approx(logged["rewards/rejected"][-1], abs=1e-6)
        assert out.margins.mean().item() == pytest.approx(logged["rewards/margins"][-1], abs=1e-6)
        assert out.accuracy == pytest.approx(logged["rewards/accuracies"][-1])
    ours = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
            "labels": batch["input_ids"].masked_fill(batch["completion_mask"] == 0, align.IGNORE_INDEX)}
    with torch.no_grad():
        for name, model in (("policy", policy), ("reference", reference)):
            mine = align.sequence_logprobs(model, ours, average=loss_type == "ipo")
            assert torch.allclose(mine, trl_logps[name], rtol=1e-5, atol=1e-5), name


def test_train_dpo_moves_only_the_adapters_and_separates_the_pairs(tiny):
    model, tokenizer = tiny
    pairs = load_preferences("train")[:8]
    inject_lora(model, r=4, alpha=8)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    history = align.train_dpo(model, tokenizer, pairs, steps=12, batch_size=4, lr=5e-3, beta=0.5, progress=False)
    assert history["loss"][0] == pytest.approx(math.log(2), abs=1e-5)  # policy == reference at the start
    assert history["margin"][0] == pytest.approx(0.0, abs=1e-5)
    assert history["loss"][-1] < 0.5 * math.log(2) and history["margin"][-1] > 0.5
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    with pytest.raises(ValueError, match="no trainable parameters"):
        align.train_dpo(tiny_frozen(tokenizer), tokenizer, pairs, steps=1, progress=False)


def tiny_frozen(tokenizer):
    from course_lib.models import tiny_model

    model, _ = tiny_model(seed=2, tokenizer=tokenizer)
    return model.requires_grad_(False)


def test_generate_replies_returns_one_string_per_ticket_and_keeps_the_padding_side(tiny):
    model, tokenizer = tiny
    replies = align.generate_replies(model, tokenizer, ["short", "a much longer ticket text here"],
                                     max_new_tokens=5, progress=False)
    assert len(replies) == 2 and all(isinstance(r, str) for r in replies)
    assert tokenizer.padding_side == "right"
    again = align.generate_replies(model, tokenizer, ["a much longer ticket text here"], max_new_tokens=5,
                                   progress=False)
    assert again[0] == replies[1]  # left padding does not change a greedy reply


# --- the KL-regularised objective -----------------------------------------------------------------------------

def test_kl_regularized_optimum_beats_other_policies_and_has_the_right_limits():
    torch.manual_seed(0)
    ref_logps, rewards = torch.randn(3, 6) * 3 - 20, torch.randn(3, 6)
    ref = torch.softmax(ref_logps, -1)
    for beta in (0.1, 1.0):
        best = align.rlhf_objective(align.kl_regularized_optimum(ref_logps, rewards, beta), ref, rewards, beta)
        for _ in range(50):
            other = torch.softmax(torch.randn(3, 6), -1)
            assert (best >= align.rlhf_objective(other, ref, rewards, beta) - 1e-6).all()
        assert (best >= align.rlhf_objective(ref, ref, rewards, beta) - 1e-6).all()
    assert torch.equal(align.kl_regularized_optimum(ref_logps, rewards, 1e-4).argmax(-1), rewards.argmax(-1))
    assert torch.allclose(align.kl_regularized_optimum(ref_logps, rewards, 1e6), ref, atol=1e-5)


def test_policy_gradient_with_kl_converges_to_the_closed_form_and_without_kl_collapses():
    torch.manual_seed(1)
    ref_logps, rewards = torch.randn(4, 5), torch.randn(4, 5)
    run = align.policy_gradient(ref_logps, rewards, beta=0.5, steps=600, samples=64, lr=0.05)
    target = align.kl_regularized_optimum(ref_logps, rewards, 0.5)
    assert (run["policy"] - target).abs().max().item() < 0.05
    greedy = align.policy_gradient(ref_logps, rewards, beta=0.0, steps=600, samples=64, lr=0.05)
    assert (greedy["policy"].max(-1).values > 0.95).all()
    assert torch.equal(greedy["policy"].argmax(-1), rewards.argmax(-1))
    assert greedy["kl"][-1] > run["kl"][-1]


def test_best_of_n_kl_formula_matches_the_exact_divergence():
    m = 100_000  # best-of-n of a uniform distribution over m outcomes ranked by reward
    ranks = torch.arange(1, m + 1, dtype=torch.float64)
    for n in (1, 2, 4, 16):
        p = (ranks / m) ** n - ((ranks - 1) / m) ** n
        exact = (p * (p * m).log()).sum().item()
        assert align.best_of_n_kl(n) == pytest.approx(exact, abs=1e-3)
