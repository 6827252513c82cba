"""The language model layer: loading models, LoRA settings and tensors, and SFT batches."""

from .lora import LoRA, PolicyLoRA
from .models import SMOLLM2, TINY, load_model

__all__ = ["LoRA", "PolicyLoRA", "SMOLLM2", "TINY", "load_model"]
