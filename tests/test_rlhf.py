"""course_lib.rlhf: the KL-regularised optimum, REINFORCE with a KL penalty, the best-of-n KL bound."""
import torch

from course_lib import rlhf


def test_kl_regularized_optimum_beats_other_policies_and_has_the_right_limits():
    torch.manual_seed(0)
    ref_logps, rewards = torch.randn(3, 6) * 3 - 20, torch.randn(3, 6)
    ref = torch.softmax(ref_logps, -1)
    for beta in (0.1, 1.0):
        best = rlhf.rlhf_objective(rlhf.kl_regularized_optimum(ref_logps, rewards, beta), ref, rewards, beta)
        for _ in range(50):
            other = torch.softmax(torch.randn(3, 6), -1)
            assert (best >= rlhf.rlhf_objective(other, ref, rewards, beta) - 1e-6).all()
        assert (best >= rlhf.rlhf_objective(ref, ref, rewards, beta) - 1e-6).all()
    assert torch.equal(rlhf.kl_regularized_optimum(ref_logps, rewards, 1e-4).argmax(-1), rewards.argmax(-1))
    assert torch.allclose(rlhf.kl_regularized_optimum(ref_logps, rewards, 1e6), ref, atol=1e-5)


def test_policy_gradient_with_kl_converges_to_the_closed_form_and_without_kl_collapses():
    torch.manual_seed(1)
    ref_logps, rewards = torch.randn(4, 5), torch.randn(4, 5)
    run = rlhf.policy_gradient(ref_logps, rewards, beta=0.5, steps=600, samples=64, lr=0.05)
    target = rlhf.kl_regularized_optimum(ref_logps, rewards, 0.5)
    assert (run["policy"] - target).abs().max().item() < 0.05
    greedy = rlhf.policy_gradient(ref_logps, rewards, beta=0.0, steps=600, samples=64, lr=0.05)
    assert (greedy["policy"].max(-1).values > 0.95).all()
    assert torch.equal(greedy["policy"].argmax(-1), rewards.argmax(-1))
    assert greedy["kl"][-1] > run["kl"][-1]


def test_best_of_n_kl_formula_is_an_upper_bound_reached_as_outcomes_become_many():
    """Best-of-n of a uniform distribution over m outcomes ranked by reward: the exact KL is below
    log n - (n - 1) / n, far below for few outcomes, and within 1e-6 of it for 100,000."""
    for m, gap in ((4, 0.01), (100_000, 1e-6)):
        ranks = torch.arange(1, m + 1, dtype=torch.float64)
        for n in (2, 4, 16):
            p = (ranks / m) ** n - ((ranks - 1) / m) ** n
            exact = (p * (p * m).log()).sum().item()
            assert exact < rlhf.best_of_n_kl(n)
            assert (rlhf.best_of_n_kl(n) - exact > gap) if m == 4 else (rlhf.best_of_n_kl(n) - exact < gap)
    assert rlhf.best_of_n_kl(1) == 0.0
