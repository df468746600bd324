"""course_lib.approaches: four prompts for one scorer; the shipped fine-tuned adapter is the one topic 3 trains."""
import json

import pytest

from course_lib import approaches, classify, lora
from course_lib.data import TICKET_LABELS, load_tickets, ticket_adapter_path
from course_lib.decision import CostModel
from course_lib.models import load_default_model, load_minilm
from course_lib.retrieval import Retriever

TRAIN = load_tickets("train")[:40]
ROWS = load_tickets("test")[:6]


@pytest.fixture(scope="module")
def retriever():
    return Retriever([r["text"] for r in TRAIN], *load_minilm(device="cpu"), progress=False)


def test_balanced_examples_cycle_through_the_labels():
    examples = approaches.balanced_examples(load_tickets("train"), 7)
    assert [label for _, label in examples] == list(TICKET_LABELS) + list(TICKET_LABELS[:2])
    assert len({text for text, _ in examples}) == 7


def test_each_approach_builds_its_prompt(retriever):
    texts = [r["text"] for r in ROWS]
    zero = approaches.ticket_prompts("zero-shot", texts, TRAIN)
    assert zero == approaches.ticket_prompts("fine-tuned", texts, TRAIN)
    assert [m["role"] for m in zero[0]] == ["system", "user"] and zero[0][1]["content"] == texts[0]
    few = approaches.ticket_prompts("few-shot", texts, TRAIN, k=5)
    assert len(few[0]) == 2 + 2 * 5 and few[0][1:-1] == few[1][1:-1]  # the same examples for every ticket
    rag = approaches.ticket_prompts("RAG few-shot", texts, TRAIN, k=3, retriever=retriever)
    nearest = retriever.search(texts, 3).tolist()
    for prompt, row in zip(rag, nearest):
        assert [m["content"] for m in prompt[1:-1:2]] == [TRAIN[i]["text"] for i in reversed(row)]  # nearest last
    with pytest.raises(ValueError, match="needs a Retriever"):
        approaches.ticket_prompts("RAG few-shot", texts, TRAIN)
    with pytest.raises(ValueError, match="unknown approach"):
        approaches.ticket_prompts("chain-of-thought", texts, TRAIN)


def test_measure_reports_accuracy_tokens_latency_and_cost(tiny, retriever):
    model, tokenizer = tiny
    zero = approaches.measure(model, tokenizer, "zero-shot", ROWS, TRAIN, latency_tickets=2, progress=False)
    few = approaches.measure(model, tokenizer, "few-shot", ROWS, TRAIN, latency_tickets=2, progress=False)
    tuned = approaches.measure(model, tokenizer, "fine-tuned", ROWS, TRAIN, latency_tickets=2, progress=False)
    assert zero["n"] == len(ROWS) and 0 <= zero["accuracy"] <= 1 and zero["seconds_per_ticket"] > 0
    assert few["prompt_tokens"] > 4 * zero["prompt_tokens"] and tuned["prompt_tokens"] == zero["prompt_tokens"]
    cost = CostModel()
    assert zero["dollars_per_million"] == pytest.approx(1e6 * cost.per_request(zero["prompt_tokens"]))
    assert tuned["dollars_per_million"] == pytest.approx(1e6 * cost.per_request(tuned["prompt_tokens"], finetuned=True))
    scores = classify.score_prompts(model, tokenizer, [[1, 2, 3]], progress=False)
    assert scores.shape == (1, len(TICKET_LABELS))


@pytest.mark.slow
def test_the_shipped_adapter_classifies_tickets_as_recorded():
    record = json.loads((ticket_adapter_path() / "training.json").read_text())
    model, tokenizer = load_default_model(device="cpu")
    lora.load_adapter(model, ticket_adapter_path())
    test = load_tickets("test")
    accuracy = classify.evaluate(model, tokenizer, test, progress=False)
    assert record["test_size"] == len(test) and record["test_accuracy"] >= 0.8
    assert abs(accuracy - record["test_accuracy"]) <= 2 / len(test)  # thread counts may flip a near tie
