"""course_lib.knowledge: answers are judged by the fact's value, edits change documents and expectations."""
import pytest

from course_lib import knowledge
from course_lib.data import load_policies


@pytest.mark.parametrize("reply, value, expected", [
    ("You can return items within 37 days.", "37", True),
    ("Within 37.", "37", True),
    ("Within 370 days.", "37", False),
    ("Within 137 days.", "37", False),
    ("It costs 3.5 dollars.", "3", False),
    ("A 3-year warranty.", "3", True),
    ("Until 7 pm.", "7", True),
    ("no number at all", "7", False),
])
def test_a_reply_states_a_value_only_as_a_whole_number(reply, value, expected):
    assert knowledge.states_value(reply, value) is expected


def test_editing_changes_one_fact_in_its_document_and_its_expected_answer():
    documents, questions = load_policies()
    edited_docs, edited_questions = knowledge.edit_documents(documents, questions)
    changed = [(a, b) for a, b in zip(documents, edited_docs) if a["text"] != b["text"]]
    assert len(changed) == 1
    (before, after), = changed
    assert "37 days" in before["text"] and "21 days" in after["text"] and "37 days" not in after["text"]
    moved = [(q["value"], e["value"]) for q, e in zip(questions, edited_questions) if q["value"] != e["value"]]
    assert moved == [("37", "21")]
    assert "37 days" in documents[0]["text"] and questions[0]["value"] == "37"  # the inputs are left as they were


def test_training_examples_hold_no_document_and_train_the_answer_only(tiny):
    _, tokenizer = tiny
    _, questions = load_policies()
    examples = knowledge.training_examples(tokenizer, questions)
    assert len(examples) == sum(len(q["train_questions"]) for q in questions)
    ids, labels = examples[0]
    answer = tokenizer.decode([t for t in labels if t != -100])
    assert "37 days" in answer and "policy" not in tokenizer.decode(ids)
    assert knowledge.fact_accuracy(["37 days", "no"], questions[:2]) == 0.5
    with pytest.raises(ValueError, match="one reply per question"):
        knowledge.fact_accuracy(["37"], questions[:2])


def test_prompts_carry_the_retrieved_documents_only_with_a_retriever():
    class Nearest:  # stands in for a Retriever over two documents
        texts = ["doc A", "doc B"]

        def search(self, queries, k):
            import torch
            return torch.tensor([[1]] * len(queries))

    plain, rag = knowledge.prompts(["q?"]), knowledge.prompts(["q?"], Nearest())
    assert plain == [knowledge.plain_messages("q?")]
    assert "doc B" in rag[0][0]["content"] and "doc A" not in rag[0][0]["content"] and rag[0][1]["content"] == "q?"


def test_forced_choice_takes_the_most_likely_answer_sentence(tiny):
    from course_lib.align import sequence_logprobs
    from course_lib.batching import collate
    from course_lib.sft import sft_example

    model, tokenizer = tiny
    _, questions = load_policies()
    candidates = knowledge.candidate_values(questions)
    assert candidates[:3] == ["3", "4", "6"] and "21" in candidates and len(candidates) == len(set(candidates))
    chats = knowledge.prompts([q["test_question"] for q in questions[:3]])
    chosen = knowledge.choose_values(model, tokenizer, chats, questions[:3], candidates, batch_size=5, progress=False)
    for chat, q, pick in zip(chats, questions[:3], chosen):  # one at a time, unbatched: the same winner
        scores = [sequence_logprobs(model, collate([sft_example(tokenizer, chat + [
            {"role": "assistant", "content": q["answer"].format(v=c)}])], tokenizer.pad_token_id)).item()
            for c in candidates]
        assert pick == candidates[max(range(len(candidates)), key=scores.__getitem__)]
    assert knowledge.choice_accuracy([questions[0]["value"], "x"], questions[:2]) == 0.5
