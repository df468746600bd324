"""Shared fixtures: the tiny random SmolLM2-shaped model for fast tests, the real one for slow ones."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch

from course_lib.models import load_default_model, tiny_model


@pytest.fixture
def tiny():
    """A fresh tiny model (random weights, SmolLM2's layout and tokenizer)."""
    model, tokenizer = tiny_model(seed=0)
    return model, tokenizer


@pytest.fixture(scope="session")
def smollm2():
    """The real embedded SmolLM2-135M-Instruct, loaded once per session; tests must not modify it."""
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    return load_default_model(device="cpu")
