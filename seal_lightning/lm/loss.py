"""Next-token cross-entropy at label positions, never holding the logits of a whole batch.

With a 49k-token vocabulary the logits of one token take 196 KB in fp32, more than everything
a 135M model's 30 layers save for backward per token. :func:`token_losses` applies the output
head to ``chunk`` positions at a time. Where the head's weight is frozen (every LoRA run: the
inner loop and the policy's LoRA) the gradient with respect to the hidden state is computed in
the same pass, chunk by chunk, so backward keeps ``(N, hidden)`` floats instead of ``(N, vocab)``
and recomputes nothing (Liger's fused linear cross-entropy, in plain torch). A trainable head
recomputes each chunk's logits in backward (activation checkpointing of the head).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

LOSS_CHUNK = 512  # positions per head application: 512 x 49152 fp32 logits = 101 MB


def _capped(logits: torch.Tensor, cap: float | None) -> torch.Tensor:
    """Gemma's logit soft-cap (as in its forward); ``None``: the logits as they are."""
    return logits if cap is None else torch.tanh(logits / cap) * cap


class _FrozenHeadCrossEntropy(torch.autograd.Function):
    """Per-position losses of ``softcap(hidden @ weight.T + bias)``; ``weight`` and ``bias`` get no gradient."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk, cap):
        losses, grads = [], []
        for start in range(0, len(hidden), chunk):
            h = hidden[start : start + chunk]
            logits = _capped(F.linear(h, weight, bias).float(), cap)
            t = targets[start : start + chunk]
            losses.append(torch.logsumexp(logits, -1) - logits.gather(1, t[:, None])[:, 0])
            d = torch.softmax(logits, -1)  # d loss / d logits = softmax - onehot
            d[torch.arange(len(t), device=d.device), t] -= 1
            if cap is not None:
                d *= 1 - (logits / cap) ** 2
            grads.append((d.to(weight.dtype) @ weight).to(hidden.dtype))
        ctx.save_for_backward(torch.cat(grads))
        return torch.cat(losses)

    @staticmethod
    def backward(ctx, grad_losses):
        (grad_hidden,) = ctx.saved_tensors
        return grad_hidden * grad_losses[:, None].to(grad_hidden.dtype), None, None, None, None, None


def head_logits(model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """``model``'s output logits of ``hidden`` (its head, and Gemma's soft-cap where the model has one)."""
    return _capped(model.get_output_embeddings()(hidden), getattr(model.config, "final_logit_softcapping", None))


def _chunk_losses(head: nn.Module, cap: float | None, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(_capped(head(hidden).float(), cap), targets, reduction="none")


def token_losses(
    model: nn.Module, hidden: torch.Tensor, targets: torch.Tensor, chunk: int = LOSS_CHUNK
) -> torch.Tensor:
    """Cross-entropy of ``model``'s output head at each row of ``hidden`` ``(N, d)`` against ``targets`` ``(N,)``.

    Equal to ``F.cross_entropy(head(hidden).float(), targets, reduction="none")`` (Gemma's logit
    soft-cap included), with at most ``chunk`` rows of logits alive at once, forward or backward.
    """
    head = model.get_output_embeddings()
    cap = getattr(model.config, "final_logit_softcapping", None)
    trainable = any(p.requires_grad for p in head.parameters())
    if len(hidden) == 0:
        return hidden.sum(-1).float()
    if not torch.is_grad_enabled() or not (hidden.requires_grad or trainable):
        with torch.no_grad():
            return torch.cat(
                [
                    _chunk_losses(head, cap, hidden[s : s + chunk], targets[s : s + chunk])
                    for s in range(0, len(hidden), chunk)
                ]
            )
    if not trainable and type(head) is nn.Linear:
        return _FrozenHeadCrossEntropy.apply(hidden, head.weight, head.bias, targets, chunk, cap)
    return torch.cat(
        [
            checkpoint(_chunk_losses, head, cap, hidden[s : s + chunk], targets[s : s + chunk], use_reentrant=False)
            for s in range(0, len(hidden), chunk)
        ]
    )
