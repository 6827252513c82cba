"""LoRA adapters as plain tensors: read them off a peft model or the batched engine, merge one into a
model, compose several into one, and write peft's on-disk format (loaded by ``PeftModel.from_pretrained`` and by vLLM).

A ``Factors`` maps a module name of the base model (``model.layers.0.self_attn.q_proj``) to
``(A, B, scale)``, the update being ``scale * B @ A`` with ``A`` ``(r, in)`` and ``B`` ``(out, r)``.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel
from peft.tuners.lora import LoraLayer
from safetensors.torch import save_file
from torch import nn

Factors = dict[str, tuple[torch.Tensor, torch.Tensor, float]]


def peft_factors(model: PeftModel) -> Factors:
    """The active adapter of a peft model (detached, on its device)."""
    adapter = model.active_adapter
    factors = {}
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer) and adapter in module.lora_A:
            factors[name.removeprefix("base_model.model.")] = (
                module.lora_A[adapter].weight.detach(),
                module.lora_B[adapter].weight.detach(),
                module.scaling[adapter],
            )
    return factors


def to_cpu(factors: Factors) -> Factors:
    """A detached CPU copy (independent of the engine's buffers, which the next job overwrites)."""
    return {name: (A.detach().cpu().clone(), B.detach().cpu().clone(), s) for name, (A, B, s) in factors.items()}


def merge_into(model: nn.Module, factors: Factors) -> None:
    """Add each adapter update ``scale * B @ A`` to the weight of the named linear layer of ``model``."""
    with torch.no_grad():
        for name, (A, B, scale) in factors.items():
            weight = model.get_submodule(name).weight
            weight += (scale * B.to(weight.device, torch.float32) @ A.to(weight.device, torch.float32)).to(weight.dtype)


def compose(*parts: Factors) -> Factors:
    """One adapter whose update is the sum of ``parts``: ranks stacked, each scale folded into its B.

    Exact: ``sum_i s_i B_i A_i = [s_1 B_1 | s_2 B_2 | ...] @ [A_1; A_2; ...]``.
    """
    composed = {}
    for name in dict.fromkeys(n for part in parts for n in part):
        here = [part[name] for part in parts if name in part]
        A = torch.cat([a.float() for a, _, _ in here])
        B = torch.cat([b.float() * s for _, b, s in here], dim=1)
        composed[name] = (A, B, 1.0)
    return composed


def save_peft(factors: Factors, directory: str | Path, base_name: str = "") -> Path:
    """Write ``factors`` as a peft LoRA adapter directory (safetensors + ``adapter_config.json``)."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name, (A, B, _) in factors.items():
        tensors[f"base_model.model.{name}.lora_A.weight"] = A.detach().contiguous().cpu()
        tensors[f"base_model.model.{name}.lora_B.weight"] = B.detach().contiguous().cpu()
    save_file(tensors, out / "adapter_model.safetensors")
    ranks = {name: A.shape[0] for name, (A, _, _) in factors.items()}
    alphas = {name: s * ranks[name] for name, (_, _, s) in factors.items()}
    r = Counter(ranks.values()).most_common(1)[0][0]
    alpha = Counter(alphas.values()).most_common(1)[0][0]
    LoraConfig(
        r=r,
        lora_alpha=alpha,
        target_modules=sorted({n.rsplit(".", 1)[-1] for n in factors}),
        rank_pattern={n: v for n, v in ranks.items() if v != r},
        alpha_pattern={n: v for n, v in alphas.items() if v != alpha},
        base_model_name_or_path=base_name,
        task_type="CAUSAL_LM",
    ).save_pretrained(out)
    return out
