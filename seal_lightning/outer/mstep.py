"""The M-step's losses: supervised finetuning on kept (prompt, self-edit) pairs (ReST-EM), the
policy-gradient loss of advantage-weighted self-edits and DPO's loss on preference pairs."""

from __future__ import annotations

import random
from dataclasses import replace

import torch
import torch.nn.functional as F

from ..lm.sft import IGNORE, Rows, batch_losses, collate, label_count, tokenize_pair
from .objective import Example, OuterConfig


def sft_rows(tokenizer, pairs: list[tuple[str, str]], max_length: int) -> Rows:
    """Token ids and labels of each pair: loss on the self-edit tokens and EOS, never the prompt."""
    return [tokenize_pair(tokenizer, p, c, max_length, eos=True) for p, c in pairs]


def sft_loss(model: torch.nn.Module, pad_id: int, rows: Rows, tokens: int | None = None) -> torch.Tensor:
    """Cross-entropy of ``rows`` summed over their label tokens and divided by ``tokens`` (default:
    their own count, i.e. the token mean)."""
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in collate(rows, pad_id).items()}
    return batch_losses(model, batch).sum() / (tokens or label_count(rows))


def token_logps(model: torch.nn.Module, pad_id: int, rows: Rows) -> tuple[torch.Tensor, torch.Tensor]:
    """The log-probability of every label token of ``rows``, flattened row by row, and the row each
    token belongs to."""
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in collate(rows, pad_id).items()}
    keep = batch["labels"][:, 1:] != IGNORE
    row = torch.arange(len(rows), device=device)[:, None].expand_as(keep)[keep]
    return -batch_losses(model, batch), row


def advantage_loss(
    logps: torch.Tensor,
    rows: torch.Tensor,
    advantages: torch.Tensor,
    normalize: str,
    ref_logps: torch.Tensor | None = None,
    kl_beta: float = 0.0,
    old_logps: torch.Tensor | None = None,
    epsilon: float | None = None,
) -> torch.Tensor:
    """Summed policy-gradient loss of a step's self-edits, as TRL's GRPO: with ``old_logps`` (the
    tokens' log-probabilities when the M-step began) and ``epsilon``, the clipped surrogate
    ``-min(r A, clip(r, 1 - eps, 1 + eps) A)`` of the ratio ``r = exp(lp - old)``, so later optimiser
    steps on the same self-edits stop pushing a token once its ratio left the trust region; without,
    ``-A lp`` (the on-policy gradient ``-A grad lp``). Plus ``kl_beta`` times TRL's per-token k3
    estimate of the KL divergence to the reference. ``sequence``: each self-edit's token mean,
    summed (divide by the step's self-edits); ``token``: summed over tokens (divide by the step's
    tokens)."""
    a = advantages[rows]
    if old_logps is not None and epsilon is not None:
        ratio = torch.exp(logps - old_logps)
        per_token = -torch.min(ratio * a, ratio.clamp(1 - epsilon, 1 + epsilon) * a)
    else:
        per_token = -a * logps
    if kl_beta:
        d = ref_logps - logps
        per_token = per_token + kl_beta * (torch.exp(d) - d - 1)
    if normalize == "token":
        return per_token.sum()
    n = len(advantages)
    sums = torch.zeros(n, device=logps.device, dtype=per_token.dtype).index_add(0, rows, per_token)
    counts = torch.zeros(n, device=logps.device, dtype=per_token.dtype).index_add(0, rows, torch.ones_like(per_token))
    return (sums / counts.clamp(min=1)).sum()


def sequence_logps(logps: torch.Tensor, rows: torch.Tensor, n: int) -> torch.Tensor:
    """Each row's summed token log-probability."""
    return torch.zeros(n, device=logps.device, dtype=logps.dtype).index_add(0, rows, logps)


def dpo_loss(
    chosen: torch.Tensor, rejected: torch.Tensor, ref_chosen: torch.Tensor, ref_rejected: torch.Tensor, beta: float
) -> torch.Tensor:
    """Summed DPO (sigmoid) loss of preference pairs from summed sequence log-probabilities, as in TRL:
    ``-log sigmoid(beta * ((chosen - ref_chosen) - (rejected - ref_rejected)))``."""
    return -F.logsigmoid(beta * ((chosen - ref_chosen) - (rejected - ref_rejected))).sum()


def micro_batches(n: int, world: int, rank: int, size: int | None) -> list[list[int]]:
    """This rank's examples of a step of ``n`` (every ``world``-th), in micro-batches of at most ``size``
    (None: one); every rank gets as many micro-batches, so some may be empty."""
    share = -(-n // world)  # the largest share of any rank
    size = size or max(share, 1)
    mine = list(range(rank, n, world))
    return [mine[start : start + size] for start in range(0, max(share, 1), size)]


def step_loss(
    model: torch.nn.Module,
    tokenizer,
    config: OuterConfig,
    step: list[Example],
    max_length: int,
    world: int = 1,
    mine: list[int] | None = None,
    reference: torch.nn.Module | None = None,
) -> torch.Tensor:
    """The loss of the examples ``mine`` of one optimiser step under ``config.algorithm`` (default: the
    whole step), divided by the whole step's normaliser (tokens, self-edits or pairs) and multiplied by
    ``world`` (DDP averages gradients), so the gradients of all ranks' micro-batches add up to the step's
    mean whatever the number of processes (``micro_batches``). Empty ``mine`` computes a zero-weighted
    loss on the first example, so every rank makes the same collective calls. ``reference``: the
    starting policy where a frozen copy is kept (a fully finetuned policy); otherwise a LoRA policy
    with its adapter disabled."""
    pad = tokenizer.pad_token_id
    mine = list(range(len(step))) if mine is None else mine
    weight, mine = (world, mine) if mine else (0, [0])
    if config.algorithm == "dpo":
        pairs = [(step[i].prompt, text) for i in mine for text in (step[i].chosen, step[i].rejected)]
        rows = sft_rows(tokenizer, pairs, max_length)
        logps = sequence_logps(*token_logps(model, pad, rows), len(rows))
        ref = sequence_logps(*reference_logps(model, pad, rows, reference), len(rows))
        return weight * dpo_loss(logps[0::2], logps[1::2], ref[0::2], ref[1::2], config.dpo_beta) / len(step)
    rows = sft_rows(tokenizer, [(e.prompt, e.text) for e in step], max_length)
    if config.algorithm == "rest_em":
        return weight * sft_loss(model, pad, [rows[i] for i in mine], label_count(rows))
    logps, index = token_logps(model, pad, [rows[i] for i in mine])
    ref = reference_logps(model, pad, [rows[i] for i in mine], reference)[0] if config.kl_beta else None
    advantages = torch.tensor([step[i].advantage for i in mine], device=logps.device, dtype=logps.dtype)
    old = torch.cat([step[i].old_logps for i in mine]).to(logps) if step[0].old_logps is not None else None
    loss = advantage_loss(logps, index, advantages, config.normalize, ref, config.kl_beta, old, config.clip_epsilon)
    return weight * loss / (len(step) if config.normalize == "sequence" else label_count(rows))


def with_old_logps(
    model: torch.nn.Module, tokenizer, config: OuterConfig, examples: list[Example], max_length: int, batch_size: int
) -> list[Example]:
    """Advantage examples with their self-edit tokens' log-probabilities under ``model`` as it is
    now (the M-step's start) in ``old_logps``, for the clipped surrogate (``config.clip_epsilon``); no
    gradient. Other algorithms' examples, or advantage's without a trust region, as they are."""
    if config.algorithm != "advantage" or config.clip_epsilon is None:
        return examples
    out = []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        with torch.no_grad():
            logps, index = token_logps(
                model, tokenizer.pad_token_id, sft_rows(tokenizer, [(e.prompt, e.text) for e in chunk], max_length)
            )
        out += [replace(e, old_logps=logps[index == i].detach()) for i, e in enumerate(chunk)]
    return out


def reference_logps(
    model: torch.nn.Module, pad_id: int, rows: Rows, reference: torch.nn.Module | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``token_logps`` under the starting policy: the frozen ``reference``, or ``model`` (a peft
    model) with its adapter disabled; no gradient."""
    with torch.no_grad():
        if reference is not None:
            return token_logps(reference.eval(), pad_id, rows)
        with model.disable_adapter():
            return token_logps(model, pad_id, rows)


def step_order(n: int, epochs: int, size: int, seed: int) -> list[list[int]]:
    """The examples of each optimiser step: ``epochs`` seeded shuffles of ``range(n)``, cut into
    steps of ``size``."""
    order, steps = random.Random(seed), []
    for _ in range(epochs):
        index = list(range(n))
        order.shuffle(index)
        steps += [index[start : start + size] for start in range(0, n, size)]
    return steps
