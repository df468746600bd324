"""course_lib.classify on the tiny model: masking, padding-independent scores, the fast loss, learning."""
import pytest
import torch

from course_lib import classify, lora
from course_lib.data import TICKET_LABELS, load_tickets
from course_lib.grading import assert_number_close, assert_tensors_close


def test_encode_example_trains_only_the_answer(tiny):
    _, tokenizer = tiny
    ids, labels = classify.encode_example(tokenizer, "My parcel is late.", "delivery")
    prompt = classify.prompt_ids(tokenizer, "My parcel is late.")
    assert ids[:len(prompt)] == prompt
    assert labels[:len(prompt)] == [-100] * len(prompt)
    answer = labels[len(prompt):]
    assert tokenizer.decode(answer) == "delivery<|im_end|>"
    assert "support ticket" in tokenizer.decode(prompt) and tokenizer.decode(prompt).endswith("assistant\n")


def test_answer_loss_equals_full_loss(tiny):
    model, tokenizer = tiny
    rows = load_tickets("train")[:4]
    batch = classify.collate([classify.encode_example(tokenizer, r["text"], r["label"]) for r in rows],
                             tokenizer.pad_token_id)
    assert (batch["attention_mask"] == 0).any(), "rows of different lengths are needed to test padding"
    assert_number_close(classify.answer_loss(model, batch), model(**batch).loss.item(), atol=1e-6, rtol=0)


def test_label_logits_do_not_depend_on_padding(tiny):
    model, tokenizer = tiny
    texts = ["short", "a considerably longer ticket text about a refund that never arrived"]
    together = classify.label_logits(model, tokenizer, texts, progress=False)
    alone = torch.cat([classify.label_logits(model, tokenizer, [t], progress=False) for t in texts])
    assert together.shape == (2, len(TICKET_LABELS))
    assert_tensors_close(together, alone, atol=1e-4, rtol=1e-4)


def test_label_tokens_must_be_single_and_distinct(tiny):
    _, tokenizer = tiny
    assert len(set(classify.label_token_ids(tokenizer))) == len(TICKET_LABELS)
    with pytest.raises(ValueError, match="one-token labels"):
        classify.label_token_ids(tokenizer, ["billing"])


def test_training_lowers_the_loss_of_the_adapters_only(tiny):
    model, tokenizer = tiny
    lora.inject_lora(model, r=8, alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "up_proj"])
    frozen = {n: p.clone() for n, p in model.named_parameters() if not p.requires_grad}
    rows = load_tickets("train")[:8]
    history = classify.train_classifier(model, tokenizer, rows, steps=20, batch_size=4, lr=3e-2, progress=False)
    assert len(history["loss"]) == 20
    # A random tiny model's logits are small (tied 0.02-std embeddings), so its loss can only fall a little
    # below ln(49152) = 10.8; the real model's learning is shown by the topic 3 notebook.
    assert sum(history["loss"][-5:]) / 5 < history["loss"][0] - 0.4
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if not p.requires_grad)


def test_training_needs_trainable_parameters(tiny):
    model, tokenizer = tiny
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        classify.train_classifier(model, tokenizer, load_tickets("train")[:2], steps=1, progress=False)


def test_batch_indices_visit_every_example_once_per_epoch_in_a_seeded_order():
    batches = classify.batch_indices(10, steps=5, batch_size=4, seed=3)
    assert [len(b) for b in batches] == [4] * 5
    flat = [i for b in batches for i in b]
    assert sorted(flat[:10]) == list(range(10)) and flat[:10] != list(range(10))  # shuffled, each once
    assert flat[10:] == flat[:10]  # the second epoch repeats the order, across a batch boundary
    assert classify.batch_indices(10, 5, 4, seed=3) == batches != classify.batch_indices(10, 5, 4, seed=4)
