"""Trained-looking LoRA adapters for tests: peft initialises ``lora_B`` to zero, so an adapter
changes nothing until its ``lora_B`` weights are set."""

from __future__ import annotations

import torch


def perturb_lora(model: torch.nn.Module, std: float, seed: int = 0, add: bool = False) -> torch.nn.Module:
    """Draw every ``lora_B`` weight of ``model`` from N(0, std) (``add``: add such noise to it), seeded
    and without touching the global random state; in place, and returns ``model``."""
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(seed)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.add_(torch.randn_like(p) * std) if add else p.normal_(0, std)
    return model
