"""A KV-cached decode loop of our own over any Hugging Face causal LM, for batches of short and
medium completions on CPU or GPU.

``generate`` from transformers is overhead-bound on a 2-core CPU (about 140 ms a step at batch 16 for
SmolLM2-135M, of which the matmuls are 60 ms): top-p sorts the whole vocabulary and samples from
it every step (37 ms), and the fused CPU attention kernel is slow for one query token (21 ms). This
loop does what those do at a fraction of the cost, with the same distribution:

* one prefill per prompt, its KV cache copied to the prompt's ``k`` samples;
* matmul attention for the decoding steps (``grouped_attention``; the prefill keeps the model's own);
* temperature, then exact nucleus (top-p) sampling among the ``CANDIDATES`` most likely tokens (the
  whole vocabulary for a batch whose nucleus is not inside them), drawn with the caller's generator;
* a row stops at EOS, at a stop string, or when a ``Choices`` trie allows only EOS; the loop ends
  when every row has;
* ``targets``: each prompt's gold continuation is scored in the same prefill (teacher-forced mean
  log-probability per token), so a closed-book evaluation that both answers and scores its
  questions runs each question through the model once, not twice.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator
from typing import NamedTuple

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, eager_mask

from ..lm.loss import head_logits, token_losses

CANDIDATES = 1024  # tokens considered for top-p before falling back to the whole vocabulary


class Choices:
    """A finite set of allowed completions as a token trie: sampling picks among them with the model's
    own probabilities (renormalised over what the trie allows next), each ending with EOS."""

    def __init__(self, tokenizer, choices: list[str]) -> None:
        if not choices:
            raise ValueError("Choices needs at least one allowed completion")
        self.eos, self.root, self.longest = tokenizer.eos_token_id, {}, 0
        for text in choices:
            ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [self.eos]
            self.longest = max(self.longest, len(ids))
            node = self.root
            for token in ids:
                node = node.setdefault(token, {})

    def allowed(self, generated: list[int]) -> list[int]:
        """Tokens allowed after ``generated``; only EOS once a choice is complete (or the row is done)."""
        node = self.root
        for token in generated:
            node = node.get(token)
            if not node:
                return [self.eos]
        return list(node)


def grouped_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple:
    """transformers' eager attention without copying K and V once per query head of a group
    (``repeat_kv``): the group's queries share one matmul with their K/V head. ``query`` is
    (B, H, q, d), ``key``/``value`` (B, H_kv, L, d); returns (B, q, H, d) and no weights."""
    b, heads, q_len, d = query.shape
    kv_heads, length = key.shape[1], key.shape[2]
    scores = query.reshape(b, kv_heads, heads // kv_heads * q_len, d) @ key.transpose(-1, -2) * scaling
    if attention_mask is not None:
        mask = attention_mask[:, :, None, :, :length]  # (B, 1, 1, q, L): the same for every head of a group
        scores = (scores.view(b, kv_heads, heads // kv_heads, q_len, length) + mask).view(scores.shape)
    probs = nn.functional.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    probs = nn.functional.dropout(probs, p=dropout, training=module.training)
    out = (probs @ value).view(b, heads, q_len, d)
    return out.transpose(1, 2).contiguous(), None


GROUPED = "seal_grouped"
AttentionInterface.register(GROUPED, grouped_attention)
AttentionMaskInterface.register(GROUPED, eager_mask)


@contextlib.contextmanager
def fast_attention(model: nn.Module) -> Iterator[None]:
    """``grouped_attention`` for the duration (several times faster than SDPA's CPU kernel for one
    query token; its scores grow with the square of a prefill), the model's own choice restored
    after. A model without a switchable attention implementation keeps its own."""
    previous = getattr(getattr(model, "config", None), "_attn_implementation", None)
    switched = False
    if previous is not None:
        with contextlib.suppress(ValueError, AttributeError):
            model.set_attn_implementation(GROUPED)
            switched = True
    try:
        yield
    finally:
        if switched:
            model.set_attn_implementation(previous)


def nucleus(logits: torch.Tensor, temperature: float, top_p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Probabilities (B, n) at ``temperature`` of each row's most likely tokens, zero outside the
    nucleus of mass ``top_p`` (the fewest tokens whose probability reaches it), and their ids (B, n).
    As transformers' temperature and top-p warpers, but sorting ``CANDIDATES`` tokens, not all."""
    logits = logits.float() / temperature
    logz = logits.logsumexp(-1, keepdim=True)
    for n in (min(CANDIDATES, logits.shape[-1]), logits.shape[-1]):
        values, index = logits.topk(n)
        probs = (values - logz).exp()
        if n == logits.shape[-1] or bool((probs.sum(-1) >= top_p).all()):
            break
    above = probs.cumsum(-1) - probs  # mass of the more likely tokens
    keep = above < top_p
    keep[:, 0] = True
    return probs * keep, index


def pick(
    logits: torch.Tensor, do_sample: bool, temperature: float, top_p: float, generator: torch.Generator | None
) -> torch.Tensor:
    """Next token of each row of ``logits`` (B, V): greedy, or drawn from ``nucleus``."""
    if not do_sample:
        return logits.argmax(-1)
    if top_p >= 1.0:
        probs = (logits.float() / temperature).softmax(-1)
        return torch.multinomial(probs, 1, generator=generator).squeeze(1)
    probs, index = nucleus(logits, temperature, top_p)
    index, order = index.sort(-1)  # draw in vocabulary order: a tiny change of the logits that swaps
    probs = probs.gather(1, order)  # two nearly equal tokens' ranks must not change the token drawn
    return index.gather(1, torch.multinomial(probs, 1, generator=generator)).squeeze(1)


class Decoded(NamedTuple):
    tokens: list[list[int]]  # new tokens of each row, EOS excluded
    logprobs: list[float] | None  # per prompt, its target's mean log-probability per token (``targets``)


def _cache(out):
    return out["cache"] if "cache" in out else out["past_key_values"]  # out.past_key_values warns on 5.20+


def _prefill(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, last_only: dict):
    """The prompts' forward: the next-token logits after each prompt (B, V) and the KV cache."""
    # the prefill keeps the model's own attention: SDPA's memory does not grow with the square of a
    # long prompt (a batch of 2000-token ARC prompts would need gigabytes of attention scores)
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **last_only)
    return out.logits[:, -1], _cache(out)


def _prefill_scored(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor, targets: list[list[int]]):
    """``_prefill`` of prompts followed by their (right-padded) targets, the cache cut back to the
    prompts; also each target's teacher-forced mean log-probability per token (NaN if empty), from
    the output head at the target positions only, a few hundred positions at a time."""
    width, longest = ids.shape[1], max(map(len, targets))
    tail = torch.zeros(len(ids), longest, dtype=ids.dtype, device=ids.device)
    tail_mask = torch.zeros_like(tail, dtype=mask.dtype)
    for row, target in enumerate(targets):
        tail[row, : len(target)] = torch.tensor(target, dtype=ids.dtype)
        tail_mask[row, : len(target)] = 1
    full_mask = torch.cat([mask, tail_mask], dim=1)
    positions = (full_mask.cumsum(-1) - 1).clamp(min=0)
    out = model.get_decoder()(
        input_ids=torch.cat([ids, tail], dim=1), attention_mask=full_mask, position_ids=positions, use_cache=True
    )
    hidden, cache = out.last_hidden_state, _cache(out)
    cache.crop(-longest)  # back to the prompts (a negative count: the form every transformers version takes)
    rows = torch.tensor([r for r, t in enumerate(targets) for _ in t], dtype=torch.long, device=ids.device)
    cols = torch.tensor([width - 1 + j for t in targets for j in range(len(t))], dtype=torch.long, device=ids.device)
    flat = torch.tensor([token for t in targets for token in t], dtype=torch.long, device=ids.device)
    losses = token_losses(model, hidden[rows, cols], flat).float()
    sums = torch.zeros(len(targets), device=ids.device).index_add(0, rows, losses)
    counts = torch.zeros(len(targets), device=ids.device).index_add(0, rows, torch.ones_like(losses))
    logits = head_logits(model, hidden[:, width - 1].contiguous())
    return logits, cache, (-sums / counts).tolist()


@torch.no_grad()
def decode(
    model: nn.Module,
    enc: dict[str, torch.Tensor],
    *,
    max_new_tokens: int,
    eos: int,
    k: int = 1,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    done: Callable[[list[int]], bool] | None = None,
    choices: Choices | None = None,
    targets: list[list[int]] | None = None,
) -> Decoded:
    """New tokens (EOS excluded) of ``k`` completions of each left-padded prompt in ``enc``, prompt-major.

    ``done(tokens)``: whether a row's completion is finished (a stop string); checked after every token.
    ``targets``: token ids of a continuation per prompt, scored in the prefill (``Decoded.logprobs``).
    """
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft passes these through
    params = inspect.signature(inner.forward).parameters
    cache_arg = "cache" if "cache" in params else "past_key_values"  # transformers < 5.20: past_key_values
    last_only = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
    mask = enc["attention_mask"]
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    scores = None
    if targets is None:
        logits, cache = _prefill(model, enc["input_ids"], mask, positions, last_only)
    else:
        logits, cache, scores = _prefill_scored(inner, enc["input_ids"], mask, targets)
    if k > 1:
        cache.batch_repeat_interleave(k)
        mask, logits = mask.repeat_interleave(k, 0), logits.repeat_interleave(k, 0)
    position = positions[:, -1:].repeat_interleave(k, 0)
    rows = len(logits)
    tokens: list[list[int]] = [[] for _ in range(rows)]
    finished = [False] * rows
    with fast_attention(model):
        for step in range(max_new_tokens):
            if choices is not None:
                allowed = torch.full_like(logits, float("-inf"))
                for row in range(rows):
                    allowed[row, choices.allowed(tokens[row])] = 0.0
                logits = logits + allowed
            next_token = pick(logits, do_sample, temperature, top_p, generator)
            next_token = next_token.masked_fill(torch.tensor(finished, device=next_token.device), eos)
            for row, token in enumerate(next_token.tolist()):
                if finished[row]:
                    continue
                if token == eos:
                    finished[row] = True
                    continue
                tokens[row].append(token)
                finished[row] = done is not None and done(tokens[row])
            if all(finished) or step == max_new_tokens - 1:
                break
            mask = torch.cat([mask, mask.new_ones(rows, 1)], dim=1)
            position = position + 1
            out = model(
                input_ids=next_token[:, None],
                attention_mask=mask,
                position_ids=position,
                use_cache=True,
                **{cache_arg: cache},
            )
            logits = out.logits[:, -1]
    return Decoded(tokens, scores)
