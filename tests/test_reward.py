"""course_lib.reward: the Bradley-Terry loss by hand, and a reward model that learns the house style."""
import math

import pytest
import torch

from course_lib import reward
from course_lib.data import load_preferences
from course_lib.training import TrainConfig


def test_bradley_terry_loss_hand_values_and_stability():
    chosen, rejected = torch.tensor([2.0, 0.0, -1000.0]), torch.tensor([1.0, 0.0, 1000.0])
    loss = reward.bradley_terry_loss(chosen, rejected)
    expected = (math.log1p(math.exp(-1.0)) + math.log(2.0) + 2000.0) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert reward.bradley_terry_loss(torch.tensor([5.0]), torch.tensor([1.0])).item() < math.log(2) < \
        reward.bradley_terry_loss(torch.tensor([1.0]), torch.tensor([5.0])).item()


@pytest.mark.slow
def test_reward_model_learns_the_house_style_from_pairs():
    train, test = load_preferences("train"), load_preferences("test")
    model = reward.load_reward_model(seed=0)
    before = reward.pairwise_accuracy(model, test)
    history = reward.train_reward_model(model, train, TrainConfig(steps=12, batch_size=8), progress=False)
    after = reward.pairwise_accuracy(model, test)
    assert history["loss"][-1] < history["loss"][0]
    assert after >= 0.95 and after > before


def test_reward_model_trains_under_the_whole_config():
    """The reward model takes the one TrainConfig: accumulation, a held-out metric, the best checkpoint and early
    stopping work as in SFT."""
    train, test = load_preferences("train"), load_preferences("test")[:16]
    model = reward.load_reward_model(seed=0)
    scores = iter([0.9, 0.5, 0.4, 0.3])  # the held-out metric gets worse after the first evaluation
    kept = {}

    def metric():
        value = next(scores)
        kept[value] = reward.pairwise_accuracy(model, test)
        return {"accuracy": value}

    config = TrainConfig(steps=8, batch_size=4, accumulation=2, lr=1e-2, eval_every=2, monitor="accuracy",
                         mode="max", patience=2)
    history = reward.train_reward_model(model, train, config, metric=metric, progress=False)
    assert history["eval_step"] == [2, 4, 6] and history["stopped_early"] and history["best_step"] == 2
    assert len(history["loss"]) == 6
    assert reward.pairwise_accuracy(model, test) == kept[0.9]  # the weights of step 2 came back
