"""The ``hf`` generation backend (default, CPU and GPU): batched generation on the torch modules
themselves (left padding, KV cache, seeded; the loop is ``decode.py``), optionally restricted to a
finite set of completions (``Choices``)."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator

import torch
from peft import PeftModel
from torch import nn

from .base import GenerationBackend
from .decode import Choices, decode


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run ``model`` in eval mode and restore its previous mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@torch.no_grad()
def generate(
    model: nn.Module,
    tokenizer,
    prompts: list[str],
    *,
    max_new_tokens: int,
    num_return_sequences: int = 1,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    batch_size: int = 32,
    stop: str | None = None,
    choices: list[str] | None = None,
) -> list[str]:
    """Complete every prompt; returns ``len(prompts) * num_return_sequences`` strings, prompt-major.

    Prompts are processed ``batch_size`` rows at a time (counting the return sequences). Sampling
    is seeded per call, so the same seed gives the same text whatever ran before. A row stops at
    ``stop`` (if given) and its text is cut there. ``choices``: every completion is one of these.
    """
    texts, _ = _generate(
        model,
        tokenizer,
        prompts,
        max_new_tokens=max_new_tokens,
        num_return_sequences=num_return_sequences,
        do_sample=do_sample,
        temperature=temperature,
        top_p=top_p,
        seed=seed,
        batch_size=batch_size,
        stop=stop,
        choices=choices,
    )
    return texts


@torch.no_grad()
def answer_scored(
    model: nn.Module,
    tokenizer,
    questions: list[str],
    targets: list[str],
    *,
    max_new_tokens: int,
    batch_size: int = 32,
    stop: str | None = None,
) -> tuple[list[str], list[float]]:
    """Greedy answers to ``questions`` and each ``target``'s teacher-forced mean log-probability per
    token right after its question, from one prefill per question (``decode``'s ``targets``)."""
    if len(targets) != len(questions):
        raise ValueError(f"{len(targets)} targets for {len(questions)} questions")
    return _generate(
        model, tokenizer, questions, max_new_tokens=max_new_tokens, batch_size=batch_size, stop=stop, targets=targets
    )


def _generate(
    model: nn.Module,
    tokenizer,
    prompts: list[str],
    *,
    max_new_tokens: int,
    num_return_sequences: int = 1,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    batch_size: int = 32,
    stop: str | None = None,
    choices: list[str] | None = None,
    targets: list[str] | None = None,
) -> tuple[list[str], list[float] | None]:
    """``generate``, and with ``targets`` each one's log-probability after its prompt (else None)."""
    per_chunk = max(1, batch_size // num_return_sequences)
    device = next(model.parameters()).device
    trie = Choices(tokenizer, choices) if choices else None
    if trie and trie.longest > max_new_tokens:
        raise ValueError(
            f"max_new_tokens={max_new_tokens} is below the longest allowed completion "
            f"({trie.longest} tokens with EOS); raise model.sampling.max_new_tokens"
        )
    generator = torch.Generator(device).manual_seed(seed) if do_sample else None

    def stopped(tokens: list[int]) -> bool:
        return stop in tokenizer.decode(tokens, skip_special_tokens=True)

    outputs: list[str] = []
    scores: list[float] = []
    # the target alone, as ``lm.sft.tokenize_pair`` tokenises a completion after its prompt
    target_ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in targets] if targets else None
    with eval_mode(model):
        for start in range(0, len(prompts), per_chunk):
            enc = tokenizer(
                prompts[start : start + per_chunk], return_tensors="pt", padding=True, padding_side="left"
            ).to(device)
            decoded = decode(
                model,
                enc,
                max_new_tokens=max_new_tokens,
                eos=tokenizer.eos_token_id,
                k=num_return_sequences,
                do_sample=do_sample,
                temperature=temperature,
                top_p=top_p,
                generator=generator,
                done=stopped if stop else None,
                choices=trie,
                targets=target_ids[start : start + per_chunk] if target_ids else None,
            )
            scores += decoded.logprobs or []
            for text in tokenizer.batch_decode(decoded.tokens, skip_special_tokens=True):
                outputs.append(text.split(stop, 1)[0].strip() if stop else text.strip())
    return outputs, scores if targets else None


def merged(policy: nn.Module, base: bool) -> nn.Module:
    """A copy of a peft ``policy`` with its LoRA merged into the weights (``base``: dropped), for
    generation: peft's per-layer adapter adds half again to every decoding step (16.7 s vs 10.8 s
    for 12 self-edits of 64 tokens, bf16, 2 cores). Merged in the policy's dtype: exact in fp32. A
    policy without LoRA is returned as it is."""
    if not isinstance(policy, PeftModel):
        return policy
    model = copy.deepcopy(policy)
    return (model.unload() if base else model.merge_and_unload()).requires_grad_(False)


class HFBackend(GenerationBackend):
    """Our decode loop on the torch modules themselves (self-edits from a merged copy)."""

    samples_from_module = True

    def sample(
        self,
        policy,
        tokenizer,
        version,
        prompts,
        k,
        base,
        *,
        max_new_tokens,
        temperature,
        top_p,
        seed,
        batch_size,
        choices=None,
    ):
        return generate(
            merged(policy, base),
            tokenizer,
            prompts,
            max_new_tokens=max_new_tokens,
            num_return_sequences=k,
            do_sample=True,
            temperature=temperature,
            top_p=top_p,
            seed=seed,
            batch_size=batch_size,
            choices=choices,
        )

    def answer(self, policy, frozen, tokenizer, version, questions, *, max_new_tokens, stop, batch_size):
        return generate(frozen, tokenizer, questions, max_new_tokens=max_new_tokens, batch_size=batch_size, stop=stop)
