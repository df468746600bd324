"""course_lib.reward: the Bradley-Terry loss by hand, and a reward model that learns the house style."""
import math

import pytest
import torch

from course_lib import reward
from course_lib.data import load_preferences


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
    history = reward.train_reward_model(model, train, steps=12, batch_size=8, progress=False)
    after = reward.pairwise_accuracy(model, test)
    assert history["loss"][-1] < history["loss"][0]
    assert after >= 0.95 and after > before
