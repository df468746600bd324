"""Measure topic 1's comparisons on the embedded SmolLM2-135M-Instruct and write them as JSON.

* ``tickets``: the support-ticket test split solved four ways (zero-shot, few-shot with 5 fixed examples,
  few-shot with the 5 nearest training tickets by MiniLM embedding, topic 3's fine-tuned adapter): accuracy,
  prompt tokens, seconds per ticket (batch of one, retrieval included, median of 16), dollars per million
  requests under the default CostModel.
  Each approach's predictions are kept, and RAG few-shot vs fine-tuned is compared with McNemar's paired test.
* ``first split``: the same comparison (RAG few-shot over the first split's training tickets, an adapter trained
  by topic 3's recipe on them) on the course's first, leaky split, reported separately on the test tickets that
  have a training near duplicate there (``splits.leaks``) and on the rest: what leakage did to the headline.
* ``knowledge``: the fictional shop's policies. Base model, RAG (the nearest document in the prompt) and a LoRA
  fine-tuned on the training questions (r=16 on every attention and MLP projection, 60 steps of 8, lr 1e-3,
  seed 0), each on the paraphrased test questions and on the training questions, read two ways: generated
  replies that state the value, and a forced choice among every value in the task (the answer sentence the
  model finds most likely); then the return window is edited in the documents (37 -> 21 days) and the same
  questions are asked again.

    python scripts/measure/measure_approaches.py [tickets|first_split|knowledge|all]   -> course_lib/data/measurements/*.json
"""
from __future__ import annotations

import argparse
import json

import torch

from course_lib import approaches, classify, knowledge, lora, metrics, splits
from course_lib.data import load_policies, load_tickets, ticket_adapter_path, write_measurement
from course_lib.device import use_cores
from course_lib.models import load_default_model, load_minilm
from course_lib.recipes import KNOWLEDGE_LORA, TICKET_LORA
from course_lib.retrieval import Retriever



def tickets() -> dict:
    train, test = load_tickets("train"), load_tickets("test")
    encoder, enc_tokenizer = load_minilm(device="cpu")
    retriever = Retriever([r["text"] for r in train], encoder, enc_tokenizer)
    model, tokenizer = load_default_model(device="cpu")
    results = {}
    for approach in approaches.APPROACHES:
        if approach == "fine-tuned":
            lora.load_adapter(model, ticket_adapter_path())
        results[approach] = approaches.measure(model, tokenizer, approach, test, train, k=5, retriever=retriever,
                                               latency_tickets=16)
        print(json.dumps({k: v for k, v in results[approach].items() if k != "predictions"}))
    return {"test_size": len(test), "k": 5, "torch_threads": torch.get_num_threads(), "approaches": results,
            "rag_vs_fine_tuned": _paired(results, test)}


def _paired(results: dict, test: list[dict], items: list[int] | None = None) -> dict:
    """Accuracy of RAG few-shot and fine-tuned on ``items`` (all by default), and McNemar's test between them."""
    items = range(len(test)) if items is None else items
    right = {name: [results[name]["predictions"][i] == test[i]["label"] for i in items]
             for name in ("RAG few-shot", "fine-tuned")}
    return {"n": len(right["fine-tuned"]), **{name: sum(r) / len(r) for name, r in right.items()},
            "mcnemar": metrics.mcnemar(right["RAG few-shot"], right["fine-tuned"])}


def first_split() -> dict:
    train, test = load_tickets("train", first_split=True), load_tickets("test", first_split=True)
    found = splits.leaks([r["text"] for r in train], [r["text"] for r in test])
    leaked = sorted({i for i, _, _ in found})
    rest = sorted(set(range(len(test))) - set(leaked))
    encoder, enc_tokenizer = load_minilm(device="cpu")
    retriever = Retriever([r["text"] for r in train], encoder, enc_tokenizer)
    model, tokenizer = load_default_model(device="cpu")
    results = {"RAG few-shot": approaches.measure(model, tokenizer, "RAG few-shot", test, train, k=5,
                                                  retriever=retriever, latency_tickets=1)}
    history, seconds = TICKET_LORA.fit(model, classify.examples(tokenizer, train), tokenizer.pad_token_id)
    results["fine-tuned"] = approaches.measure(model, tokenizer, "fine-tuned", test, train, latency_tickets=1)
    record = {"test_size": len(test), "leaked_items": leaked, "adapter_recipe": TICKET_LORA.record(),
              "adapter_train_seconds": round(seconds, 1), "adapter_final_loss": history["loss"][-1],
              "all": _paired(results, test), "leaked": _paired(results, test, leaked),
              "not_leaked": _paired(results, test, rest),
              "predictions": {name: r["predictions"] for name, r in results.items()}}
    print(json.dumps({k: record[k] for k in ("all", "leaked", "not_leaked")}))
    return record


def _ask(model, tokenizer, questions, candidates, retriever=None) -> dict:
    """Generated replies and forced choices, on the paraphrased test questions and on the training questions."""
    asked = {}
    for split in ("test", "train"):
        texts = [q["test_question"] if split == "test" else q["train_questions"][0] for q in questions]
        chats = knowledge.prompts(texts, retriever)
        replies = knowledge.answer(model, tokenizer, chats)
        chosen = knowledge.choose_values(model, tokenizer, chats, questions, candidates)
        asked[split] = {"accuracy": knowledge.fact_accuracy(replies, questions),
                        "choice_accuracy": knowledge.choice_accuracy(chosen, questions),
                        "replies": {q["fact"]: r for q, r in zip(questions, replies)},
                        "chosen": {q["fact"]: c for q, c in zip(questions, chosen)}}
    return asked


def knowledge_task() -> dict:
    documents, questions = load_policies()
    edited_docs, edited_questions = knowledge.edit_documents(documents, questions)
    candidates = knowledge.candidate_values(questions)  # old and new values alike, in both phases
    encoder, enc_tokenizer = load_minilm(device="cpu")
    retrievers = {name: Retriever([d["text"] for d in docs], encoder, enc_tokenizer)
                  for name, docs in (("original", documents), ("edited", edited_docs))}
    model, tokenizer = load_default_model(device="cpu")
    results = {"base": {}, "RAG": {}, "fine-tuned": {}}
    for name, qs in (("original", questions), ("edited", edited_questions)):
        results["base"][name] = _ask(model, tokenizer, qs, candidates)
        results["RAG"][name] = _ask(model, tokenizer, qs, candidates, retrievers[name])
    history, seconds = KNOWLEDGE_LORA.fit(model, knowledge.training_examples(tokenizer, questions),
                                          tokenizer.pad_token_id)
    for name, qs in (("original", questions), ("edited", edited_questions)):
        results["fine-tuned"][name] = _ask(model, tokenizer, qs, candidates)
    edited_fact = next(q["fact"] for q in questions if q.get("edited_value"))
    return {"facts": len(questions), "documents": len(documents), "edited_fact": edited_fact,
            "candidates": candidates,
            "qa_recipe": KNOWLEDGE_LORA.record(), "qa_train_seconds": round(seconds, 1), "qa_final_loss": history["loss"][-1],
            "results": results}


def main() -> None:
    use_cores()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("which", nargs="?", default="all", choices=("tickets", "first_split", "knowledge", "all"))
    which = parser.parse_args().which
    for name, run in (("tickets", tickets), ("first_split", first_split), ("knowledge", knowledge_task)):
        if which in (name, "all"):
            record = run()
            print(f"wrote {write_measurement(f'approaches_{name}.json', record)}")


if __name__ == "__main__":
    main()
