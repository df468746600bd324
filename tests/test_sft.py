"""course_lib.sft: assistant-only labels (against TRL), the answer-only loss, the batch schedule, and the SFT
loop against transformers' Trainer with PEFT."""
from pathlib import Path

import pytest
import torch

from course_lib import batching, classify, lora, sft
from course_lib.data import load_tickets
from course_lib.grading import assert_number_close, assert_tensors_close
from course_lib.models import tiny_model
from course_lib.training import TrainConfig

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


def test_sft_labels_cover_exactly_each_reply_and_its_end_of_turn(tiny):
    _, tokenizer = tiny
    ids, labels = sft.sft_example(tokenizer, CHATS[1])
    assert len(ids) == len(labels)
    trained = [i for i, lab in zip(ids, labels) if lab != batching.IGNORE_INDEX]
    assert all(lab in (batching.IGNORE_INDEX, i) for i, lab in zip(ids, labels))
    expected = (tokenizer.encode("Hello.<|im_end|>", add_special_tokens=False)
                + tokenizer.encode("Done: the refund of $12.99 is on its way.<|im_end|>", add_special_tokens=False))
    assert trained == expected
    # the two turns are separate runs: the user turn between them is masked
    runs = sum(1 for a, b in zip([batching.IGNORE_INDEX] + labels, labels)
               if a == batching.IGNORE_INDEX and b != batching.IGNORE_INDEX)
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
    ours = [sft.sft_example(tokenizer, chat, max_length=max_length) for chat in CHATS]
    # TRL drops examples whose reply was cut off entirely (nothing left to train on)
    kept = [(ids, labels) for ids, labels in ours if any(lab != batching.IGNORE_INDEX for lab in labels)]
    assert len(kept) == len(batch["input_ids"]) and (max_length != 30 or len(kept) == 1)
    for row, (ids, labels) in enumerate(kept):
        n = len(ids)
        assert batch["input_ids"][row, :n].tolist() == ids
        assert batch["labels"][row, :n].tolist() == labels
        assert (batch["labels"][row, n:] == batching.IGNORE_INDEX).all()


def test_trl_prompt_completion_trains_our_labels_plus_the_newline_after_the_last_reply(tiny, tmp_path):
    """The path topic 5's notebook uses: TRL's prompt-completion format trains the completion's tokens as
    rendered, so the template's newline after the final <|im_end|> is trained too (ours masks it), and every
    assistant turn inside the prompt is masked (ours trains each reply)."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    model, tokenizer = tiny
    config = SFTConfig(output_dir=str(tmp_path), per_device_train_batch_size=len(CHATS), use_cpu=True, bf16=False,
                       report_to=[], train_sampling_strategy="sequential", dataloader_num_workers=0)
    trainer = SFTTrainer(model=model, args=config, processing_class=tokenizer,
                         train_dataset=Dataset.from_list([{"prompt": c[:-1], "completion": c[-1:]} for c in CHATS]))
    batch = next(iter(trainer.get_train_dataloader()))
    newline = tokenizer.encode("\n", add_special_tokens=False)
    for row, chat in enumerate(CHATS):
        ids, labels = sft.sft_example(tokenizer, chat)
        _, last_only = sft.sft_example(tokenizer, chat[-2:])  # the final reply alone, after its user turn
        n = len(ids)
        assert batch["input_ids"][row, :n].tolist() == ids and ids[-len(newline):] == newline
        theirs = batch["labels"][row, :n].tolist()
        assert theirs[-len(newline):] == newline and labels[-len(newline):] == [batching.IGNORE_INDEX] * len(newline)
        trained = [lab for lab in theirs[:-len(newline)] if lab != batching.IGNORE_INDEX]
        assert trained == [lab for lab in last_only if lab != batching.IGNORE_INDEX]
        ours = [lab for lab in labels if lab != batching.IGNORE_INDEX]
        assert (trained == ours) == (row == 0)  # one reply: the same; two: ours trains the first one too


def test_sft_example_refuses_a_chat_without_reply(tiny):
    with pytest.raises(ValueError, match="no assistant turn"):
        sft.sft_example(tiny[1], CHATS[0][:1])


def test_answer_loss_equals_full_loss(tiny):
    model, tokenizer = tiny
    rows = load_tickets("train")[:4]
    batch = batching.collate(classify.examples(tokenizer, rows),
                             tokenizer.pad_token_id)
    assert (batch["attention_mask"] == 0).any(), "rows of different lengths are needed to test padding"
    assert_number_close(sft.answer_loss(model, batch), model(**batch).loss.item(), atol=1e-6, rtol=0)


def test_eval_loss_is_the_token_weighted_mean_whatever_the_batching(tiny):
    model, tokenizer = tiny
    rows = load_tickets("validation")[:7]
    examples = classify.examples(tokenizer, rows)
    losses, tokens = [], []
    with torch.no_grad():
        for ids, labels in examples:  # one example at a time: no padding at all
            logits = model(input_ids=torch.tensor([ids])).logits[0, :-1]
            target = torch.tensor(labels[1:])
            keep = target != batching.IGNORE_INDEX
            losses.append(torch.nn.functional.cross_entropy(logits[keep], target[keep], reduction="sum").item())
            tokens.append(int(keep.sum()))
        expected = sum(losses) / sum(tokens)
        for batch_size in (1, 3, 16):
            got = sft.eval_loss(model, examples, tokenizer.pad_token_id, batch_size=batch_size)
            assert_number_close(got, expected, atol=1e-5, rtol=1e-5, name=f"eval_loss, batches of {batch_size}")


def test_transformers_trainer_with_peft_takes_the_same_steps_as_train_sft(tiny):
    """The library way (PEFT's get_peft_model + transformers' Trainer, reading our batches in order) and
    course_lib's loop, from the same adapter initialisation, give the same losses and the same adapter."""
    import tempfile

    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
    from transformers import Trainer, TrainingArguments

    model, tokenizer = tiny
    lora.inject_lora(model, r=4, alpha=8, target_modules=["q_proj", "v_proj"])
    start = lora.adapter_state_dict(model)
    start = {k: v.clone() for k, v in start.items()}
    examples = classify.examples(tokenizer, load_tickets("train")[:12])
    steps, batch = 5, 4
    ours = sft.train_sft(model, examples, tokenizer.pad_token_id, TrainConfig(steps=steps, batch_size=batch, lr=1e-2),
                         progress=False)

    base, _ = tiny_model(seed=0)
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                 lora_dropout=0.0, task_type="CAUSAL_LM"))
    set_peft_model_state_dict(peft_model, start)
    order = [i for idx in batching.batch_indices(len(examples), steps, batch) for i in idx]
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(output_dir=tmp, max_steps=steps, per_device_train_batch_size=batch, learning_rate=1e-2,
                                 lr_scheduler_type="constant", weight_decay=0.0, max_grad_norm=0.0,
                                 train_sampling_strategy="sequential", logging_steps=1, report_to=[],
                                 save_strategy="no", use_cpu=True, disable_tqdm=True)
        trainer = Trainer(model=peft_model, args=args, train_dataset=sft.as_dataset([examples[i] for i in order]),
                          data_collator=sft.data_collator(tokenizer.pad_token_id))
        trainer.train()
    theirs = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert_tensors_close(torch.tensor(theirs), torch.tensor(ours["loss"]), atol=1e-4, rtol=0,
                         name="Trainer's losses vs train_sft's")
    trained = get_peft_model_state_dict(peft_model)
    for key, value in lora.adapter_state_dict(model).items():
        assert_tensors_close(trained[key], value, atol=1e-5, rtol=1e-4, name=key)
