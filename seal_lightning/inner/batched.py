"""Batched multi-LoRA inner engine: K independent adapters trained in one forward/backward.

Every targeted ``nn.Linear`` of the frozen base gets K stacked LoRA pairs. A step packs all
active adapters' sequences into bins of whole rows and routes each token to its adapter; the loss
is the sum of per-adapter mean token losses (logits only where there is a label), so adapter k's
gradient is exactly its own. ``StackedAdamW`` gives each adapter its own moments, learning rate,
linear schedule and gradient clipping, and each adapter runs its own number of epochs, so the
result matches training the K adapters one after another (``SequentialLoRA``) step for step:
same seeded initialisation, same batch order. An adapter whose loss turns NaN/inf stops; the
others carry on.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..lm.lora_io import Factors, save_peft, to_cpu
from ..lm.sft import pack, packed_logits, tokenize_pair
from .engine import InnerEngine, InnerJob, InnerResult
from .stacked_adamw import StackedAdamW


class Routing:
    """Which adapter each token belongs to, and where it sits in a ``(K, T, ·)`` per-adapter grid.

    ``owner`` names the adapter of each row of the input, in any order. A packed training batch
    is routed token by token: ``owner`` then has one entry per token (a row of N tokens counts as
    N rows of one token). The grid spans only the adapters ``lo..hi-1`` that own rows, so a batch
    of a few adapters does not pay for all K.
    """

    def __init__(self, owner: torch.Tensor) -> None:
        self.lo, self.hi = int(owner.min()), int(owner.max()) + 1
        self.owner = owner - self.lo
        counts = torch.bincount(self.owner, minlength=self.hi - self.lo)
        order = torch.argsort(self.owner, stable=True)
        starts = counts.cumsum(0) - counts
        self.rank = torch.empty_like(self.owner)  # row's place among its adapter's rows
        self.rank[order] = torch.arange(len(owner), device=owner.device) - starts[self.owner[order]]
        self.rows = int(counts.max())
        self._slots: dict[int, tuple[torch.Tensor, int]] = {}

    def slots(self, tokens: int) -> tuple[torch.Tensor, int]:
        """Flat index into the ``((hi - lo) * T, ·)`` grid of each of ``tokens`` tokens, and T."""
        per_row = tokens // len(self.owner)
        if per_row not in self._slots:
            t = torch.arange(per_row, device=self.owner.device)
            width = self.rows * per_row
            index = (self.owner[:, None] * width + self.rank[:, None] * per_row + t).reshape(-1)
            self._slots[per_row] = index, width
        return self._slots[per_row]


class MultiLoRALinear(nn.Module):
    """``base(x) + scale * B[k] A[k] x`` where k is the adapter that owns x's token.

    ``A`` is ``(K, r, in)`` and ``B`` is ``(K, out, r)``. The routed tokens are scattered into a
    ``(K, T, in)`` grid and both LoRA products are one ``bmm`` each, whatever K: the number of
    operations does not grow with the number of adapters.
    """

    def __init__(self, base: nn.Linear, k: int, r: int, scale: float, dropout: float) -> None:
        super().__init__()
        self.base, self.scale = base, scale
        device = base.weight.device
        self.A = nn.Parameter(torch.zeros(k, r, base.in_features, device=device, dtype=torch.float32))
        self.B = nn.Parameter(torch.zeros(k, base.out_features, r, device=device, dtype=torch.float32))
        self.dropout = nn.Dropout(dropout)
        self.routing: Routing | None = None  # None = base only

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        if self.routing is None:
            return out
        flat = self.dropout(x).reshape(-1, x.shape[-1]).to(self.A.dtype)  # adapters stay fp32, as in peft
        index, width = self.routing.slots(len(flat))
        A, B = self.A[self.routing.lo : self.routing.hi], self.B[self.routing.lo : self.routing.hi]
        grid = flat.new_zeros(len(A) * width, flat.shape[1]).index_copy(0, index, flat)
        grid = torch.bmm(torch.bmm(grid.view(len(A), width, -1), A.transpose(1, 2)), B.transpose(1, 2))
        delta = grid.view(-1, grid.shape[-1]).index_select(0, index).view(out.shape)
        return (out + delta * self.scale).to(out.dtype)


def inject(model: nn.Module, targets: str | list[str], k: int, r: int, scale: float, dropout: float) -> dict[str, MultiLoRALinear]:
    """Wrap the targeted linear layers of ``model`` in place (``all-linear``: all but the output head)."""
    head = model.get_output_embeddings()
    layers = {}
    for name, module in list(model.named_modules()):
        if not isinstance(module, nn.Linear) or module is head:
            continue
        if targets != "all-linear" and name.rsplit(".", 1)[-1] not in targets:
            continue
        parent_name, _, child = name.rpartition(".")
        wrapped = MultiLoRALinear(module, k, r, scale, dropout)
        setattr(model.get_submodule(parent_name) if parent_name else model, child, wrapped)
        layers[name] = wrapped
    return layers


@contextlib.contextmanager
def routed(layers: dict[str, MultiLoRALinear], owner: torch.Tensor) -> Iterator[None]:
    """Route input row i (or packed token i) to adapter ``owner[i]``."""
    routing = Routing(owner)
    for layer in layers.values():
        layer.routing = routing
    try:
        yield
    finally:
        for layer in layers.values():
            layer.routing = None


class BatchedLoRA(InnerEngine):
    """Trains up to ``config.max_adapters`` jobs' adapters together, then answers all their questions at once."""

    def _run(self, base: nn.Module, tokenizer, jobs: list[InnerJob]) -> list[InnerResult]:
        cfg = self.config
        if getattr(self, "base", None) is not base:  # a retry after out-of-memory reuses the injected layers
            self.width = min(cfg.max_adapters, len(jobs))
            self.layers = inject(base, cfg.target_modules, self.width, cfg.r, cfg.alpha / cfg.r, cfg.dropout)
            self.base = base
        results = []
        for start in range(0, len(jobs), self.width):
            group = jobs[start : start + self.width]
            results += self._run_group(base, tokenizer, group)
            self._done(len(group))
        return results

    def _run_group(self, model: nn.Module, tokenizer, jobs: list[InnerJob]) -> list[InnerResult]:
        cfg, layers, width = self.config, self.layers, self.width
        start = time.perf_counter()
        self._init(jobs)
        rows = [[tokenize_pair(tokenizer, p, c, cfg.max_length, eos=job.eos) for p, c in job.sequences] for job in jobs]
        plans = [self._plan(job, len(r)) for job, r in zip(jobs, rows)]
        lrs = [job.lr or cfg.lr for job in jobs] + [0.0] * (width - len(jobs))
        optimizer = StackedAdamW([p for layer in layers.values() for p in (layer.A, layer.B)], width)
        losses: list[list[float]] = [[] for _ in jobs]
        errors: list[str | None] = [None] * len(jobs)
        model.train()
        for step in range(max(len(plan) for plan in plans)):
            active = [k for k, plan in enumerate(plans) if step < len(plan) and errors[k] is None]
            if not active:
                break
            batch = {k: [rows[k][i] for i in plans[k][step]] for k in active}
            per_adapter = self._losses(model, batch)
            if not torch.isfinite(per_adapter[active]).all():
                # Packed rows share attention, so one adapter's NaN reaches the others' losses: find
                # the adapters whose own loss is not finite, stop them, and redo the step without them.
                with torch.no_grad():
                    for k in active:
                        value = self._losses(model, {k: batch[k]})[k].item()
                        if not math.isfinite(value):
                            errors[k] = f"inner loss is {value} at step {step}"
                batch = {k: b for k, b in batch.items() if errors[k] is None}
                per_adapter = self._losses(model, batch) if batch else per_adapter
            stepping = []
            for k, value in zip(list(batch), per_adapter[list(batch)].tolist()):
                if math.isfinite(value):
                    stepping.append(k)
                    losses[k].append(value)
                else:
                    errors[k] = f"inner loss is {value} at step {step}"
            if stepping:
                per_adapter[stepping].sum().backward()
                on = [k in stepping for k in range(width)]
                optimizer.clip_grad_norm_(cfg.max_grad_norm)  # per adapter, as in SequentialLoRA
                optimizer.step([lr * (1 - step / len(plans[k])) if on[k] else 0.0 for k, lr in enumerate(lrs)], on)
            optimizer.zero_grad()
        model.eval()
        results = []
        for k, job in enumerate(jobs):
            epochs = job.epochs or cfg.epochs
            per_epoch = len(plans[k]) // epochs
            last = losses[k][-per_epoch:] if errors[k] is None else []
            results.append(InnerResult(
                answers=[], loss=sum(last) / len(last) if last else math.nan, steps=len(losses[k]),
                error=errors[k], extra={"losses": losses[k]},
            ))
            if job.keep_adapter and errors[k] is None:
                results[k].extra["adapter"] = to_cpu(self.factors(k))
        trained = time.perf_counter()
        self._answer(tokenizer, jobs, results)
        elapsed = time.perf_counter() - start
        for result in results:  # the group's wall time, shared evenly
            result.seconds = elapsed / len(jobs)
            result.extra["train_seconds"] = (trained - start) / len(jobs)
        return results

    def _losses(self, model: nn.Module, batch: dict[int, list[tuple[list[int], list[int]]]]) -> torch.Tensor:
        """Mean next-token loss of each adapter's rows, all packed into bins (NaN for absent adapters)."""
        device = self.layers_device
        packed = pack([row for rows in batch.values() for row in rows], device, self.config.pack_length)
        row_owner = torch.tensor([k for k, rows in batch.items() for _ in rows], device=device)
        owner = row_owner[packed.source]
        with routed(self.layers, owner):
            logits = packed_logits(model, packed)
        token_loss = F.cross_entropy(logits.float(), packed.targets, reduction="none")
        kept_owner = owner[packed.keep]
        sums = torch.zeros(self.width, device=device).index_add(0, kept_owner, token_loss)
        return sums / torch.zeros(self.width, device=device).index_add_(0, kept_owner, torch.ones_like(token_loss))

    def _init(self, jobs: list[InnerJob]) -> None:
        """Seeded like peft's reset_lora_parameters: kaiming-uniform A layer by layer, B zero."""
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            for k, job in enumerate(jobs):
                torch.manual_seed(job.seed)
                for layer in self.layers.values():
                    nn.init.kaiming_uniform_(layer.A[k], a=math.sqrt(5))
                    nn.init.zeros_(layer.B[k])
            for layer in self.layers.values():  # unused slots of a short last group stay zero
                layer.A[len(jobs):].zero_()
                layer.B[len(jobs):].zero_()

    def _plan(self, job: InnerJob, n: int) -> list[list[int]]:
        """Row indices of every optimiser step, in SequentialLoRA's seeded order."""
        order, bs, plan = random.Random(job.seed), self.config.batch_size, []
        for _ in range(job.epochs or self.config.epochs):
            index = list(range(n))
            order.shuffle(index)
            plan += [index[b : b + bs] for b in range(0, n, bs)]
        return plan

    def _answer(self, tokenizer, jobs: list[InnerJob], results: list[InnerResult]) -> None:
        """All questions of all healthy adapters in one generation call, each row on its adapter (or
        ``adapter_answers`` given each healthy adapter's factors)."""
        live = [k for k, r in enumerate(results) if r.error is None]
        if self.adapter_answers is not None and live:
            for k, answers in zip(live, self.adapter_answers([jobs[k] for k in live], [self.factors(k) for k in live])):
                results[k].answers = answers
            return
        questions = [q for k in live for q in jobs[k].questions]
        if not questions:
            return
        owner = torch.tensor([k for k in live for _ in jobs[k].questions], device=self.layers_device)
        answers, size = [], self.config.eval_batch_size
        for s in range(0, len(questions), size):  # one generation chunk at a time, each row on its adapter
            with routed(self.layers, owner[s : s + size]):
                answers += self.answer(self.base, tokenizer, questions[s : s + size])
        start = 0
        for k in live:
            n = len(jobs[k].questions)
            results[k].answers = answers[start : start + n]
            start += n

    @property
    def layers_device(self) -> torch.device:
        return next(iter(self.layers.values())).base.weight.device

    def factors(self, k: int) -> Factors:
        """Adapter ``k`` of the last group, as ``{module name: (A, B, scale)}``."""
        return {name: (layer.A[k].detach(), layer.B[k].detach(), layer.scale) for name, layer in self.layers.items()}

    def save_adapter(self, k: int, directory: str | Path, base_name: str = "") -> Path:
        """Adapter ``k`` of the last group in plain peft format (``PeftModel.from_pretrained`` loads it)."""
        return save_peft(self.factors(k), directory, base_name)
