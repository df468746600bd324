"""course_lib.align: the house style checker, log-probabilities of replies, generation."""
import torch

from course_lib import align, batching, sft
from course_lib.data import load_preferences


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


# --- log-probabilities ----------------------------------------------------------------------------------------

def _batch(tokenizer, texts_and_replies):
    return batching.collate([sft.sft_example(tokenizer, align.chat(p, r)) for p, r in texts_and_replies],
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
            if target != batching.IGNORE_INDEX:
                total += torch.log_softmax(logits[row, t - 1].double(), -1)[target].item()
                count += 1
        expected.append((total, count))
    assert torch.allclose(fast.double(), torch.tensor([e[0] for e in expected], dtype=torch.float64), atol=1e-4)
    assert torch.allclose(align.logprobs_from_logits(logits, batch["labels"]), fast, atol=1e-4)
    assert torch.allclose(mean.double(), torch.tensor([t / c for t, c in expected], dtype=torch.float64), atol=1e-5)


def test_generate_replies_returns_one_string_per_ticket_and_keeps_the_padding_side(tiny):
    model, tokenizer = tiny
    replies = align.generate_replies(model, tokenizer, ["short", "a much longer ticket text here"],
                                     max_new_tokens=5, progress=False)
    assert len(replies) == 2 and all(isinstance(r, str) for r in replies)
    assert tokenizer.padding_side == "right"
    again = align.generate_replies(model, tokenizer, ["a much longer ticket text here"], max_new_tokens=5,
                                   progress=False)
    assert again[0] == replies[1]  # left padding does not change a greedy reply


