"""When to fine-tune: the decision rule and the cost model behind prompting vs RAG vs fine-tuning.

The ladder, cheapest first: prompt engineering -> retrieval-augmented generation (RAG) -> fine-tuning ->
pre-training. :func:`recommend` walks it with the usual rules of thumb and says why; the cost model turns a
workload (requests, tokens per request, training set) into dollars so that a choice can be checked against
request volume (:func:`break_even_requests`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

LADDER = ("prompt engineering", "RAG", "fine-tuning", "pre-training")  # cheapest to most expensive
FEW_EXAMPLES = 50    # fewer labelled examples than this: too few to train on, enough for a few-shot prompt
MANY_EXAMPLES = 500  # from this many on, a fine-tune can learn a format or behaviour reliably


@dataclass(frozen=True)
class Recommendation:
    approach: str  # one of LADDER
    reason: str


def recommend(n_examples: int, needs_fresh_knowledge: bool = False,
              needs_consistent_behaviour: bool = False) -> Recommendation:
    """The decision flow: fewer than FEW_EXAMPLES labelled examples -> prompt engineering; answers that need
    the latest or private facts -> RAG; MANY_EXAMPLES or more and a need for a consistent format or behaviour
    -> fine-tuning; otherwise prompting (or RAG) first."""
    if isinstance(n_examples, bool) or not isinstance(n_examples, int) or n_examples < 0:
        raise ValueError(f"n_examples must be a whole number >= 0, got {n_examples!r}")
    if n_examples < FEW_EXAMPLES:
        return Recommendation("prompt engineering", f"{n_examples} labelled examples is fewer than {FEW_EXAMPLES}: "
                              "too few to train on; put the best of them in a few-shot prompt")
    if needs_fresh_knowledge:
        return Recommendation("RAG", "the answers depend on facts that change or are private: retrieve them at "
                              "question time (a fine-tune would freeze them at training time)")
    if n_examples >= MANY_EXAMPLES and needs_consistent_behaviour:
        return Recommendation("fine-tuning", f"{n_examples} examples (at least {MANY_EXAMPLES}) and a format or "
                              "behaviour that must be consistent: teach it to the weights, and drop the long prompt")
    if n_examples >= MANY_EXAMPLES:
        return Recommendation("prompt engineering", f"{n_examples} examples would do for a fine-tune, but nothing "
                              "needs a format or behaviour a prompt cannot give: start with a few-shot prompt, "
                              "add RAG if facts are missing")
    return Recommendation("prompt engineering", f"{n_examples} examples, fewer than {MANY_EXAMPLES}: too few for a "
                          "reliable fine-tune; start with a few-shot prompt, add RAG if facts are missing")


@dataclass(frozen=True)
class CostModel:
    """Prices in dollars per 1,000 input tokens: training (billed once per epoch), the fine-tuned model's input,
    the base model's input. Output tokens are left out (the same for every option that answers the same way).
    Prices change, and so do their ratios: the defaults are one dated example (OpenAI's GPT-3.5 Turbo, August
    2023), :data:`PRICE_SHEETS` holds others; put your provider's current prices in."""
    train_per_1k: float = 0.008
    finetuned_per_1k: float = 0.012
    base_per_1k: float = 0.0015

    def training(self, tokens: int, epochs: int = 1) -> float:
        """One fine-tuning run: every training token is billed once per epoch."""
        return tokens * epochs / 1000 * self.train_per_1k

    def per_request(self, prompt_tokens: int, finetuned: bool = False) -> float:
        """One request whose prompt has ``prompt_tokens`` tokens, on the base or the fine-tuned model."""
        return prompt_tokens / 1000 * (self.finetuned_per_1k if finetuned else self.base_per_1k)

    def monthly(self, requests: float, prompt_tokens: int, finetuned: bool = False, training: float = 0.0,
                months: float = 12) -> float:
        """Cost per month of ``requests`` requests, a one-off ``training`` cost spread over ``months``."""
        return requests * self.per_request(prompt_tokens, finetuned) + training / months


PRICE_SHEETS: dict[str, CostModel] = {
    # list prices as published on those dates (dollars per 1K tokens); examples, not quotes: check your provider
    "GPT-3.5 Turbo, Aug 2023": CostModel(train_per_1k=0.008, finetuned_per_1k=0.012, base_per_1k=0.0015),
    "GPT-4o mini, Jul 2024": CostModel(train_per_1k=0.003, finetuned_per_1k=0.0003, base_per_1k=0.00015),
}


def break_even_requests(fixed_cost: float, cost_per_request_a: float, cost_per_request_b: float) -> float:
    """Requests after which option B (paying ``fixed_cost`` up front, then ``cost_per_request_b`` each) has
    cost less in total than option A (``cost_per_request_a`` each, nothing up front):
    fixed / (a - b); infinite when B's requests are not cheaper."""
    saving = cost_per_request_a - cost_per_request_b
    return math.inf if saving <= 0 else fixed_cost / saving


def monthly_costs(requests: float, prompt_tokens: int, rag_tokens: int, finetuned_tokens: int, training: float,
                  cost: CostModel = CostModel(), months: float = 12) -> dict[str, float]:
    """Dollars per month of each option at ``requests`` a month: a (few-shot) prompt on the base model, the
    same prompt plus ``rag_tokens`` of retrieved text, and a short prompt on a fine-tune whose one-off
    ``training`` cost is spread over ``months``."""
    return {"prompt engineering": cost.monthly(requests, prompt_tokens),
            "RAG": cost.monthly(requests, prompt_tokens + rag_tokens),
            "fine-tuning": cost.monthly(requests, finetuned_tokens, finetuned=True, training=training, months=months)}
