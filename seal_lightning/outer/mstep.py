"""The M-step's loss: supervised finetuning of the policy on kept (prompt, self-edit) pairs."""

from __future__ import annotations

import torch

from ..lm.sft import Rows, batch_losses, collate, label_count, tokenize_pair


def sft_rows(tokenizer, pairs: list[tuple[str, str]], max_length: int) -> Rows:
    """Token ids and labels of each pair: loss on the self-edit tokens and EOS, never the prompt."""
    return [tokenize_pair(tokenizer, p, c, max_length, eos=True) for p, c in pairs]


def sft_loss(model: torch.nn.Module, pad_id: int, rows: Rows, tokens: int | None = None) -> torch.Tensor:
    """Cross-entropy of ``rows`` summed over their label tokens and divided by ``tokens`` (default:
    their own count, i.e. the token mean)."""
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in collate(rows, pad_id).items()}
    return batch_losses(model, batch).sum() / (tokens or label_count(rows))
