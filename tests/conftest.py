import importlib.util
from pathlib import Path

import pytest
import torch

from seal_lightning.lm.models import TINY, load_model

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
# a vLLM test module's ``pytestmark``: marked ``vllm`` and skipped, saying why, where vLLM is not installed
NEEDS_VLLM = [
    pytest.mark.vllm,
    pytest.mark.skipif(
        importlib.util.find_spec("vllm") is None,
        reason="vLLM is not installed here: bash scripts/vllm_cpu_env.sh --test runs these tests in its own virtualenv",
    ),
]


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


# one training batch, one self-edit per passage, no validation: a single M-step
QUICK = ["--trainer.limit_val_batches", "0", "--data.init_args.train_size", "2", "--model.outer.k", "1"]


def fit_tiny(root: Path, *extra: str) -> Path:
    """``seal fit`` of the tiny config in ``root``, with ``QUICK`` and ``extra``; its ``last.ckpt``."""
    from seal_lightning.cli import main

    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        main(["fit", "--config", str(CONFIGS / "tiny.yaml"), *QUICK, *extra])
    return root / "checkpoints" / "tiny" / "last.ckpt"


@pytest.fixture(scope="session")
def lora_ckpt(tmp_path_factory):
    """A trained tiny LoRA policy (one M-step), shared by the tests of `seal export` and `seal adapt`."""
    return fit_tiny(tmp_path_factory.mktemp("lora"))
