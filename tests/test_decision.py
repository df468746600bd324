"""course_lib.decision: the decision flow on its cases and boundaries, the cost model on the quoted figures."""
import math

import pytest

from course_lib.decision import (FEW_EXAMPLES, LADDER, MANY_EXAMPLES, CostModel, break_even_requests, monthly_costs,
                                 recommend)


@pytest.mark.parametrize("n, fresh, consistent, expected", [
    (0, False, False, "prompt engineering"),
    (FEW_EXAMPLES - 1, True, True, "prompt engineering"),     # too few to do anything but prompt
    (FEW_EXAMPLES, True, False, "RAG"),                       # the boundary itself is no longer "fewer than 50"
    (FEW_EXAMPLES, False, False, "prompt engineering"),
    (MANY_EXAMPLES - 1, False, True, "prompt engineering"),   # 499 is not 500+
    (MANY_EXAMPLES, False, True, "fine-tuning"),
    (MANY_EXAMPLES, True, True, "RAG"),                       # facts that change beat a frozen fine-tune
    (100_000, False, False, "prompt engineering"),            # many examples alone are no reason to train
])
def test_the_decision_flow(n, fresh, consistent, expected):
    recommendation = recommend(n, needs_fresh_knowledge=fresh, needs_consistent_behaviour=consistent)
    assert recommendation.approach == expected and recommendation.approach in LADDER
    assert str(n) in recommendation.reason or expected == "RAG"


def test_the_reason_says_what_decided():
    assert "fewer than 50" in recommend(10).reason
    assert "fewer than 500" in recommend(200).reason
    assert "change" in recommend(60, needs_fresh_knowledge=True).reason


@pytest.mark.parametrize("bad", [-1, 2.5, True, "600", None])
def test_bad_example_counts_are_refused(bad):
    with pytest.raises(ValueError, match="n_examples"):
        recommend(bad)


def test_cost_model_reproduces_the_quoted_figures():
    cost = CostModel()
    assert cost.training(1_000_000) == pytest.approx(8.0)            # "1M training tokens ~ $8"
    assert cost.training(1_000_000, epochs=3) == pytest.approx(24.0)
    assert cost.per_request(1000, finetuned=True) == pytest.approx(0.012)
    assert cost.per_request(1000) == pytest.approx(0.0015)
    assert cost.monthly(10_000, 500, training=120.0, months=12) == pytest.approx(10_000 * 0.00075 + 10.0)


def test_break_even():
    # a 1,500-token few-shot prompt on the base model vs a 60-token prompt on a $24 fine-tune
    cost = CostModel()
    a, b = cost.per_request(1500), cost.per_request(60, finetuned=True)
    n = break_even_requests(24.0, a, b)
    assert n == pytest.approx(24.0 / (a - b))
    assert n * a == pytest.approx(24.0 + n * b)
    assert break_even_requests(24.0, b, a) == math.inf and break_even_requests(24.0, a, a) == math.inf
    assert break_even_requests(0.0, a, b) == 0.0
    # at these prices a 400-token prompt is cheaper than a 60-token one on the fine-tuned model: never pays off
    assert break_even_requests(24.0, cost.per_request(400), b) == math.inf


def test_monthly_costs_of_the_three_options():
    costs = monthly_costs(10_000, 1500, 300, 60, training=24.0, cost=CostModel(), months=12)
    assert costs["prompt engineering"] == pytest.approx(10_000 * 1500 / 1000 * 0.0015)
    assert costs["RAG"] == pytest.approx(10_000 * 1800 / 1000 * 0.0015)
    assert costs["fine-tuning"] == pytest.approx(10_000 * 60 / 1000 * 0.012 + 2.0)  # training spread over 12 months
