"""vLLM under DDP with vLLM's CPU build: ``seal fit`` on 2 processes, each rank's engine on its own
cores, sampling the self-edits and answering before and after each inner update on a tiny random
Llama; and an adapter that cannot load is an error, the engine left serving.

The tiny model is ``tiny-random-llama``'s (2 layers, SmolLM2's tokenizer) with heads of 64: vLLM's
CPU attention has no kernel for its heads of 16. Run with ``bash scripts/vllm_cpu_env.sh --test``."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import NEEDS_VLLM

pytestmark = NEEDS_VLLM

from transformers import AutoModelForCausalLM, LlamaConfig  # noqa: E402

from seal_lightning.generation.adapters import Adapter  # noqa: E402
from seal_lightning.generation.vllm_backend import VLLMConfig, VLLMGenerator  # noqa: E402
from seal_lightning.generation.vllm_rank import AdapterLoadError  # noqa: E402
from seal_lightning.lm.models import TINY, load_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
VLLM = ["--model.vllm.max_model_len", "512", "--model.vllm.max_lora_rank", "16", "--model.vllm.kv_cache_gib", "0.25"]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    """The tiny random Llama as a model directory vLLM can load (heads of 64)."""
    model, tok = load_model(TINY)
    config = model.config.to_dict() | {"hidden_size": 128, "num_attention_heads": 2, "num_key_value_heads": 1}
    config |= {"intermediate_size": 256, "head_dim": 64}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(LlamaConfig(**config))
    out = tmp_path_factory.mktemp("tiny64")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


# the environment before any test here started a vLLM engine in this process (one may leave settings,
# e.g. its CPU thread binding, in os.environ that a child `seal fit` would inherit)
ENVIRONMENT = dict(os.environ)


def test_two_ddp_ranks_sample_and_answer_each_with_its_own_engine(tiny_dir, tmp_path):
    command = [sys.executable, "-m", "seal_lightning", "fit", "--config", str(ROOT / "configs/tiny.yaml")]
    command += ["--model.model", str(tiny_dir), "--model.generation", "vllm", *VLLM]
    command += ["--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu"]
    command += ["--trainer.default_root_dir", str(tmp_path / "run")]
    run = subprocess.run(command, cwd=tmp_path, env=ENVIRONMENT, capture_output=True, text=True, timeout=1500)
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-4000:]
    ledger = [json.loads(line) for line in (tmp_path / "run" / "self_edits.jsonl").read_text().splitlines()]
    assert len(ledger) == 4 * 3 and {r["rank"] for r in ledger} == {0, 1}  # each rank its own 2 passages x K=3
    assert sum(bool(r["text"]) for r in ledger) >= 6  # sampled by the engines (a random model may stop at once)
    assert all(r["baseline"] is not None and r["post"] is not None for r in ledger)  # answered before and after
    cores = {int(c) for c in re.findall(r"core ids=\[(\d+)\]", log)}
    if len(os.sched_getaffinity(0)) >= 2:
        assert cores == {0, 1}, log[-3000:]  # rank 0's engine on core 0, rank 1's on core 1


def test_an_adapter_that_cannot_load_fails_before_the_engine_and_the_engine_serves_on(tiny_dir):
    generator = VLLMGenerator(str(tiny_dir), "float32", VLLMConfig(max_model_len=512, max_lora_rank=16), 1 << 28)
    try:
        with pytest.raises(AdapterLoadError, match=r"'missing' \(id 99\) .*no adapter_config.json"):
            generator.generate(["Hello"], [Adapter("missing", 99, Path("/nonexistent"))], max_new_tokens=4)
        assert len(generator.generate(["Hello"], [None], max_new_tokens=4)) == 1  # still serving
    finally:
        generator.llm.llm_engine.engine_core.shutdown()
