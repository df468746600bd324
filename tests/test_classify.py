"""course_lib.classify on the tiny model: masking, padding-independent scores, the fast loss, learning."""
import pytest
import torch

from course_lib import batching, classify, lora
from course_lib.data import TICKET_LABELS, load_tickets
from course_lib.grading import assert_tensors_close
from course_lib.training import TrainConfig


def test_encode_example_trains_only_the_answer(tiny):
    _, tokenizer = tiny
    ids, labels = classify.encode_example(tokenizer, "My parcel is late.", "delivery")
    prompt = classify.prompt_ids(tokenizer, "My parcel is late.")
    assert ids[:len(prompt)] == prompt
    assert labels[:len(prompt)] == [-100] * len(prompt)
    answer = labels[len(prompt):]
    assert tokenizer.decode(answer) == "delivery<|im_end|>"
    assert "support ticket" in tokenizer.decode(prompt) and tokenizer.decode(prompt).endswith("assistant\n")


def test_label_logits_do_not_depend_on_padding_or_batching(tiny):
    model, tokenizer = tiny
    texts = ["a considerably longer ticket text about a refund that never arrived", "short", "a medium one, please",
             "x", "another fairly long ticket: the app crashes whenever I open the settings page"]
    alone = torch.cat([classify.label_logits(model, tokenizer, [t], progress=False) for t in texts])
    for batch_size in (2, 16):  # batches are cut from the texts sorted by length; rows keep the texts' order
        together = classify.label_logits(model, tokenizer, texts, batch_size=batch_size, progress=False)
        assert together.shape == (len(texts), len(TICKET_LABELS))
        assert_tensors_close(together, alone, atol=1e-4, rtol=1e-4)
    assert classify.label_logits(model, tokenizer, [], progress=False).shape == (0, len(TICKET_LABELS))
    # Together the prompts share a prefix (template, system prompt) that is run once; alone there is none.
    cached = classify.label_logits(model, tokenizer, texts, progress=False)
    plain = classify.score_prompts(model, tokenizer, [classify.prompt_ids(tokenizer, t) for t in texts],
                                   progress=False, prefix_cache=False)
    assert_tensors_close(cached, plain, atol=1e-4, rtol=1e-4)
    unrelated = [[5, 9, 2, 7], [8, 1], [5, 9, 3]]
    assert_tensors_close(classify.score_prompts(model, tokenizer, unrelated, batch_size=2, progress=False),
                         torch.cat([classify.score_prompts(model, tokenizer, [p], progress=False) for p in unrelated]),
                         atol=1e-4, rtol=1e-4)


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
    history = classify.train_classifier(model, tokenizer, rows, TrainConfig(steps=20, batch_size=4, lr=3e-2),
                                        progress=False)
    assert len(history["loss"]) == 20
    # A random tiny model's logits are small (tied 0.02-std embeddings), so its loss can only fall a little
    # below ln(49152) = 10.8; the real model's learning is shown by the topic 3 notebook.
    assert sum(history["loss"][-5:]) / 5 < history["loss"][0] - 0.4
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if not p.requires_grad)


def test_training_needs_trainable_parameters(tiny):
    model, tokenizer = tiny
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        classify.train_classifier(model, tokenizer, load_tickets("train")[:2], TrainConfig(steps=1), progress=False)


def test_encode_example_ends_the_answer_as_the_chat_template_does(tiny):
    """The answer ends with the template's end-of-turn token, not a hard-coded ChatML one: with a template that
    closes assistant turns with <|endoftext|> (and that as eos), that is what the answer ends with."""
    _, tokenizer = tiny
    tokenizer.chat_template = ("{% for m in messages %}{% if m.role == 'assistant' %}Answer:\n{{ m.content }}"
                               "<|endoftext|>\n{% else %}{{ m.role }}: {{ m.content }}\n{% endif %}{% endfor %}"
                               "{% if add_generation_prompt %}Answer:\n{% endif %}")
    tokenizer.eos_token = "<|endoftext|>"
    ids, labels = classify.encode_example(tokenizer, "My parcel is late.", "delivery")
    answer = [lab for lab in labels if lab != batching.IGNORE_INDEX]
    assert tokenizer.decode(answer) == "delivery<|endoftext|>" and ids[-len(answer):] == answer
    assert ids[:len(ids) - len(answer)] == classify.prompt_ids(tokenizer, "My parcel is late.")


def test_correct_marks_each_row_as_predict_labels_it_and_evaluate_averages_it(tiny):
    model, tokenizer = tiny
    rows = load_tickets("validation")[:12]
    predicted = classify.predict(model, tokenizer, [r["text"] for r in rows], progress=False)
    # every row right, then every row wrong: the marks follow the labels, not only the predictions
    right = [{**r, "label": p} for r, p in zip(rows, predicted)]
    wrong = [{**r, "label": next(x for x in TICKET_LABELS if x != p)} for r, p in zip(rows, predicted)]
    assert classify.correct(model, tokenizer, right, progress=False) == [True] * 12
    assert classify.correct(model, tokenizer, wrong, batch_size=5, progress=False) == [False] * 12
    marks = classify.correct(model, tokenizer, rows, progress=False)
    assert marks == [p == r["label"] for p, r in zip(predicted, rows)]
    assert classify.evaluate(model, tokenizer, rows, progress=False) == sum(marks) / len(rows)
