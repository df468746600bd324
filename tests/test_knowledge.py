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
