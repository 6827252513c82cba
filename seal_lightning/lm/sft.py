"""Supervised finetuning batches: loss on completion tokens only, never on the prompt or padding."""

from __future__ import annotations

from typing import NamedTuple

import torch

from .loss import token_losses

IGNORE = -100
Rows = list[tuple[list[int], list[int]]]  # (token ids, labels) per sequence


def tokenize_pair(tokenizer, prompt: str, completion: str, max_length: int, eos: bool) -> tuple[list[int], list[int]]:
    """Token ids of ``prompt + completion`` and labels that mask the prompt; truncated on the right."""
    prompt_ids = tokenizer(prompt, add_special_tokens=True)["input_ids"] if prompt else []
    completion_ids = tokenizer(completion, add_special_tokens=not prompt)["input_ids"]
    if eos:
        completion_ids = completion_ids + [tokenizer.eos_token_id]
    ids = (prompt_ids + completion_ids)[:max_length]
    labels = ([IGNORE] * len(prompt_ids) + completion_ids)[:max_length]
    return ids, labels


def label_count(rows: Rows) -> int:
    """Tokens that carry a loss (labels after the first position that are not ignored)."""
    return sum(sum(label != IGNORE for label in labels[1:]) for _, labels in rows)


def collate(rows: Rows, pad_id: int) -> dict[str, torch.Tensor]:
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
    padding: torch.Tensor  # (B * L,) bool: the padding that fills a bin up to L (no row's token)


def first_fit(lengths: list[int], length: int) -> list[list[int]]:
    """Indices of the rows in each bin of ``length`` tokens, first fit, longest first (a longer row
    gets a bin of its own length)."""
    width = max([length, *lengths])
    bins: list[list[int]] = []
    fills: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        b = next((b for b, fill in enumerate(fills) if fill + lengths[i] <= width), None)
        if b is None:
            bins.append([i])
            fills.append(lengths[i])
        else:
            bins[b].append(i)
            fills[b] += lengths[i]
    return bins


def pack(rows: Rows, device: torch.device | str = "cpu", length: int = 512) -> Packed:
    """Pack ``(ids, labels)`` rows into bins of ``length`` tokens (:func:`first_fit`), each bin padded to
    the fullest one; loss positions never cross rows.

    Attention within a bin is computed in full and masked, so its cost grows with the square of
    the bin's length: bins of a few hundred tokens waste neither attention nor padding. The model
    must be called with ``attention_mask=None`` and ``use_cache=False`` so transformers detects the
    packing from ``position_ids`` and masks attention block-diagonally (:func:`packed_losses`).
    """
    bins = first_fit([len(ids) for ids, _ in rows], length)
    fills = [sum(len(rows[j][0]) for j in b) for b in bins]
    width = max(fills)
    ids, positions, source, keep, targets, padding = [], [], [], [], [], []
    for b, fill in zip(bins, fills):
        for j in b:
            row_ids, labels = rows[j]
            keep += [len(ids) + i for i, label in enumerate(labels[1:]) if label != IGNORE]
            targets += [label for label in labels[1:] if label != IGNORE]
            ids += row_ids
            positions += range(len(row_ids))
            source += [j] * len(row_ids)
        padding += [False] * fill + [True] * (width - fill)
        ids += [0] * (width - fill)
        positions += range(width - fill)
        source += [b[-1]] * (width - fill)
    as_tensor = lambda values: torch.tensor(values, dtype=torch.long, device=device)  # noqa: E731
    return Packed(
        as_tensor(ids).view(len(bins), width),
        as_tensor(positions).view(len(bins), width),
        as_tensor(source),
        as_tensor(keep),
        as_tensor(targets),
        torch.tensor(padding, dtype=torch.bool, device=device),
    )


def packed_losses(model, packed: Packed) -> torch.Tensor:
    """Next-token loss at each kept position, ``(len(packed.keep),)``: the head never sees the rest,
    and never more than :data:`~.loss.LOSS_CHUNK` positions at once."""
    hidden = model.get_decoder()(input_ids=packed.input_ids, position_ids=packed.position_ids, use_cache=False)
    flat = hidden.last_hidden_state.reshape(-1, hidden.last_hidden_state.shape[-1])
    return token_losses(model, flat[packed.keep], packed.targets)


HIDDEN = "seal_decoder_hidden"  # a sharded model's forward method for decoder_hidden (lm.fsdp.shard)


def decoder_hidden(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The decoder's last hidden state, before the output head."""
    return model.get_decoder()(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state


def batch_losses(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Next-token loss at every label of a batch made by :func:`collate`, flattened row by row (the
    hidden states through ``model``'s FSDP hooks when it is sharded)."""
    forward = getattr(model, HIDDEN, None)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    hidden = forward(ids, mask) if forward is not None else decoder_hidden(model, ids, mask)
    labels = batch["labels"][:, 1:]
    keep = labels != IGNORE
    return token_losses(model, hidden[:, :-1][keep], labels[keep])


def row_losses(model, packed: Packed, n_rows: int) -> torch.Tensor:
    """Mean next-token loss over the labels of each of the ``n_rows`` rows in ``packed`` (NaN for a row
    without labels)."""
    losses = packed_losses(model, packed).float()
    rows = packed.source[packed.keep]
    sums = torch.zeros(n_rows, device=losses.device).index_add(0, rows, losses)
    return sums / torch.zeros(n_rows, device=losses.device).index_add(0, rows, torch.ones_like(losses))


def target_logprobs(
    model,
    tokenizer,
    prompts: list[str],
    targets: list[str],
    max_length: int,
    tokens: int = 4096,
    pack_length: int = 512,
) -> list[float]:
    """Teacher-forced mean log-probability per token of each ``target`` right after its ``prompt``
    (no generation), ``tokens`` tokens per forward pass."""
    rows = [tokenize_pair(tokenizer, p, t, max_length, eos=False) for p, t in zip(prompts, targets)]
    device = next(model.parameters()).device
    out: list[float] = []
    start = 0
    with torch.no_grad():
        while start < len(rows):
            end, used = start, 0
            while end < len(rows) and (end == start or used + len(rows[end][0]) <= tokens):
                used += len(rows[end][0])
                end += 1
            chunk = rows[start:end]
            out += (-row_losses(model, pack(chunk, device, pack_length), len(chunk))).tolist()
            start = end
    return out
