from pathlib import Path

import pytest
import torch

from seal_lightning.lm.models import TINY, load_model

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"


@pytest.fixture(scope="session", autouse=True)
def _threads():
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny():
    """A seeded 2-layer random Llama with the SmolLM2 tokenizer."""
    return load_model(TINY)


@pytest.fixture(scope="session")
def smollm2():
    return load_model("smollm2-135m")
