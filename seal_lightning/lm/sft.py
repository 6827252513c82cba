"""Supervised finetuning batches: loss on completion tokens only, never on the prompt or padding."""

from __future__ import annotations

from typing import NamedTuple

import torch

IGNORE = -100


def tokenize_pair(tokenizer, prompt: str, completion: str, max_length: int, eos: bool) -> tuple[list[int], list[int]]:
    """Token ids of ``prompt + completion`` and labels that mask the prompt; truncated on the right."""
    prompt_ids = tokenizer(prompt, add_special_tokens=True)["input_ids"] if prompt else []
    completion_ids = tokenizer(completion, add_special_tokens=not prompt)["input_ids"]
    if eos:
        completion_ids = completion_ids + [tokenizer.eos_token_id]
    ids = (prompt_ids + completion_ids)[:max_length]
    labels = ([IGNORE] * len(prompt_ids) + completion_ids)[:max_length]
    return ids, labels


def collate(rows: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad ``(ids, labels)`` rows into ``input_ids``, ``attention_mask`` and ``labels``."""
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    for i, (ids, row_labels) in enumerate(rows):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        attention_mask[i, : len(ids)] = 1
        labels[i, : len(ids)] = torch.tensor(row_labels)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


class Packed(NamedTuple):
    input_ids: torch.Tensor  # (B, L): bins of whole rows, padded to a common length L
    position_ids: torch.Tensor  # (B, L): restart at 0 for each row (and the padding), so attention stays within rows
    source: torch.Tensor  # (B * L,): the row each token comes from (padding: its bin's last row)
    keep: torch.Tensor  # flat (B * L) positions whose next token is a label
    targets: torch.Tensor  # that next token, one per kept position


def pack(rows: list[tuple[list[int], list[int]]], device: torch.device | str = "cpu", length: int = 512) -> Packed:
    """Pack ``(ids, labels)`` rows into bins of ``length`` tokens (first fit, longest first; a longer
    row gets a bin of its own length); loss positions never cross rows.

    Attention within a bin is computed in full and masked, so its cost grows with the square of
    the bin's length: bins of a few hundred tokens waste neither attention nor padding. The model
    must be called with ``attention_mask=None`` and ``use_cache=False`` so transformers detects the
    packing from ``position_ids`` and masks attention block-diagonally (:func:`packed_logits`).
    """
    width = max([length] + [len(ids) for ids, _ in rows])
    bins: list[list[int]] = []
    fills: list[int] = []  # tokens in each bin
    for i in sorted(range(len(rows)), key=lambda i: -len(rows[i][0])):
        size = len(rows[i][0])
        b = next((b for b, fill in enumerate(fills) if fill + size <= width), None)
        if b is None:
            bins.append([i])
            fills.append(size)
        else:
            bins[b].append(i)
            fills[b] += size
    width = max(fills)
    ids, positions, source, keep, targets = [], [], [], [], []
    for b, fill in zip(bins, fills):
        for j in b:
            row_ids, labels = rows[j]
            keep += [len(ids) + i for i, label in enumerate(labels[1:]) if label != IGNORE]
            targets += [label for label in labels[1:] if label != IGNORE]
            ids += row_ids
            positions += range(len(row_ids))
            source += [j] * len(row_ids)
        ids += [0] * (width - fill)
        positions += range(width - fill)
        source += [b[-1]] * (width - fill)
    as_tensor = lambda values: torch.tensor(values, dtype=torch.long, device=device)  # noqa: E731
    return Packed(as_tensor(ids).view(len(bins), width), as_tensor(positions).view(len(bins), width),
                  as_tensor(source), as_tensor(keep), as_tensor(targets))


def packed_logits(model, packed: Packed) -> torch.Tensor:
    """Logits at the kept positions only, ``(len(packed.keep), vocab)``: the head never sees the rest."""
    hidden = model.get_decoder()(input_ids=packed.input_ids, position_ids=packed.position_ids, use_cache=False)
    flat = hidden.last_hidden_state.reshape(-1, hidden.last_hidden_state.shape[-1])
    logits = model.get_output_embeddings()(flat[packed.keep])
    cap = getattr(model.config, "final_logit_softcapping", None)  # Gemma 2/3 soft-cap in their forward
    return logits if cap is None else torch.tanh(logits / cap) * cap
