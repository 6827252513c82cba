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
    input_ids: torch.Tensor  # (1, N): the rows one after another
    position_ids: torch.Tensor  # (1, N): restart at 0 for each row, so attention stays within rows
    keep: torch.Tensor  # positions whose next token is a label
    targets: torch.Tensor  # that next token, one per kept position


def pack(rows: list[tuple[list[int], list[int]]], device: torch.device | str = "cpu") -> Packed:
    """Concatenate ``(ids, labels)`` rows into one unpadded row; loss positions never cross rows.

    The model must be called with ``attention_mask=None`` and ``use_cache=False`` so transformers
    detects the packing from ``position_ids`` and masks attention block-diagonally.
    """
    ids, positions, keep, targets, offset = [], [], [], [], 0
    for row_ids, labels in rows:
        ids += row_ids
        positions += range(len(row_ids))
        for i, label in enumerate(labels[1:]):
            if label != IGNORE:
                keep.append(offset + i)
                targets.append(label)
        offset += len(row_ids)
    as_tensor = lambda values: torch.tensor(values, dtype=torch.long, device=device)  # noqa: E731
    return Packed(as_tensor([ids]), as_tensor([positions]), as_tensor(keep), as_tensor(targets))
