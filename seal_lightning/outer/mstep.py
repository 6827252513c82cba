"""The M-step's loss: supervised finetuning of the policy on kept (prompt, self-edit) pairs."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..lm.sft import IGNORE, collate, tokenize_pair

Rows = list[tuple[list[int], list[int]]]


def sft_rows(tokenizer, pairs: list[tuple[str, str]], max_length: int) -> Rows:
    """Token ids and labels of each pair: loss on the self-edit tokens and EOS, never the prompt."""
    return [tokenize_pair(tokenizer, p, c, max_length, eos=True) for p, c in pairs]


def label_count(rows: Rows) -> int:
    """Tokens that carry a loss (labels after the first position that are not ignored)."""
    return sum(sum(label != IGNORE for label in labels[1:]) for _, labels in rows)


def sft_loss(model: torch.nn.Module, pad_id: int, rows: Rows, tokens: int | None = None) -> torch.Tensor:
    """Cross-entropy of ``rows`` summed over their label tokens and divided by ``tokens`` (default:
    their own count, i.e. the token mean)."""
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in collate(rows, pad_id).items()}
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    labels = batch["labels"][:, 1:]
    loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE,
                           reduction="sum")
    return loss / (tokens or label_count(rows))
