"""AdamW over stacked parameters: slice k of every tensor is its own model with its own optimiser.

The batched inner engine keeps K adapters as tensors of shape ``(K, ...)``. Treating them as
K param groups would cost K optimiser calls per tensor; this steps all K with a few multi-tensor
(``_foreach``) operations, with per-slice learning rate and gradient clipping and an ``active``
mask. Slices start together and a slice that stops never resumes (an adapter that finished its
epochs or failed), so the active slices share one step count; a stopped slice's weights no
longer change (a failed slice's weights are undefined). With weight decay 0 and the arithmetic
of ``torch.optim.AdamW`` it matches K separate AdamW runs to rounding.
"""

from __future__ import annotations

import math

import torch


class StackedAdamW:
    """AdamW (no weight decay) with per-slice ``lr`` and ``active`` along dim 0 of every parameter."""

    CHUNK = 8  # parameters updated per multi-tensor call: bounds the temporaries to 8 tensors' size

    def __init__(
        self, params: list[torch.Tensor], k: int, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8
    ):
        if any(p.shape[0] != k for p in params):
            raise ValueError(f"every parameter must have {k} slices along dim 0")
        self.params, self.betas, self.eps = params, betas, eps
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]
        self.active, self.t = [True] * k, 0

    def clip_grad_norm_(self, max_norm: float) -> torch.Tensor:
        """Clip each slice's gradient (over all parameters) to ``max_norm``, like ``clip_grad_norm_``;
        returns the K norms."""
        norms = torch.stack([p.grad.flatten(1).norm(dim=1) for p in self.params]).norm(dim=0)
        coef = (max_norm / (norms + 1e-6)).clamp(max=1.0)
        for p in self.params:
            p.grad.mul_(coef.view(-1, *[1] * (p.dim() - 1)))
        return norms

    @torch.no_grad()
    def step(self, lrs: list[float], active: list[bool]) -> None:
        """One AdamW step for the active slices, slice k at learning rate ``lrs[k]``."""
        if any(a and not was for a, was in zip(active, self.active)):
            raise ValueError("a stopped slice cannot resume")
        self.active, self.t = list(active), self.t + 1
        beta1, beta2 = self.betas
        scale = torch.tensor(
            [lr / (1 - beta1**self.t) if a else 0.0 for lr, a in zip(lrs, active)], device=self.params[0].device
        )
        for start in range(0, len(self.params), self.CHUNK):  # temporaries for a few tensors at a time
            params, m, v = (x[start : start + self.CHUNK] for x in (self.params, self.m, self.v))
            grads = [p.grad for p in params]
            torch._foreach_lerp_(m, grads, 1 - beta1)
            torch._foreach_mul_(v, beta2)
            torch._foreach_addcmul_(v, grads, grads, 1 - beta2)
            denom = torch._foreach_sqrt(v)
            torch._foreach_div_(denom, math.sqrt(1 - beta2**self.t))
            torch._foreach_add_(denom, self.eps)
            update = torch._foreach_div(m, denom)
            torch._foreach_mul_(update, [scale.view(-1, *[1] * (p.dim() - 1)) for p in params])
            torch._foreach_sub_(params, update)

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None
