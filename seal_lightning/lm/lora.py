"""LoRA settings shared by the policy (``model.lora``) and the inner loop (``model.inner``)."""

from __future__ import annotations

from dataclasses import dataclass

from peft import LoraConfig


@dataclass(frozen=True)
class LoRA:
    """A LoRA adapter's shape: rank, alpha, dropout and the modules it wraps (peft ``target_modules``;
    ``all-linear``: every linear layer but the head)."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: str | list[str] = "all-linear"

    def peft_config(self) -> LoraConfig:
        return LoraConfig(
            r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout, target_modules=self.target_modules
        )


@dataclass(frozen=True)
class PolicyLoRA(LoRA):
    """LoRA on the policy (set ``model.lora`` to null to finetune all weights)."""
