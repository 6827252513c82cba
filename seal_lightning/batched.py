"""Batched multi-LoRA inner engine: K independent adapters trained in one forward/backward.

Every targeted ``nn.Linear`` of the frozen base gets K stacked LoRA pairs; each batch row is
routed to its adapter. The loss is the sum of per-adapter mean token losses, so adapter k's
gradient is exactly its own. Each adapter has its own AdamW moments, step count, learning rate,
linear schedule, gradient clipping and number of epochs, so the result matches training the K
adapters one after another (``SequentialLoRA``) step for step: same seeded initialisation, same
batch order. An adapter whose loss turns NaN/inf stops; the others carry on.
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
from safetensors.torch import save_file
from torch import nn

from .inner import InnerEngine, InnerJob, InnerResult
from .sft import IGNORE, collate, tokenize_pair

BETAS, EPS = (0.9, 0.999), 1e-8  # torch.optim.AdamW defaults, as in SequentialLoRA


class MultiLoRALinear(nn.Module):
    """``base(x) + scale * B[k] A[k] x`` where k is the adapter of x's batch row."""

    def __init__(self, base: nn.Linear, k: int, r: int, scale: float, dropout: float) -> None:
        super().__init__()
        self.base, self.scale = base, scale
        self.A = nn.Parameter(torch.zeros(k, r, base.in_features, device=base.weight.device))
        self.B = nn.Parameter(torch.zeros(k, base.out_features, r, device=base.weight.device))
        self.dropout = nn.Dropout(dropout)
        self.rows: torch.Tensor | None = None  # adapter index per batch row; None = base only

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        if self.rows is None:
            return out
        hidden = torch.bmm(self.dropout(x), self.A[self.rows].transpose(1, 2))
        return out + self.scale * torch.bmm(hidden, self.B[self.rows].transpose(1, 2))


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
def routed(layers: dict[str, MultiLoRALinear], rows: torch.Tensor) -> Iterator[None]:
    for layer in layers.values():
        layer.rows = rows
    try:
        yield
    finally:
        for layer in layers.values():
            layer.rows = None


class BatchedLoRA(InnerEngine):
    """Trains up to ``config.max_adapters`` jobs' adapters together, then answers all their questions at once."""

    def run(self, base: nn.Module, tokenizer, jobs: list[InnerJob]) -> list[InnerResult]:
        cfg = self.config
        results: list[InnerResult | None] = [None] * len(jobs)
        todo = []
        for i, job in enumerate(jobs):
            if job.sequences:
                todo.append(i)
            else:
                results[i] = InnerResult(answers=[], error="self-edit has no usable text")
        if not todo:
            return results
        width = min(cfg.max_adapters, len(todo))
        self.layers = inject(base, cfg.target_modules, width, cfg.r, cfg.alpha / cfg.r, cfg.dropout)
        self.base = base
        for start in range(0, len(todo), width):
            group = todo[start : start + width]
            for i, result in zip(group, self._run_group(base, tokenizer, [jobs[i] for i in group])):
                results[i] = result
        return results

    def _run_group(self, model: nn.Module, tokenizer, jobs: list[InnerJob]) -> list[InnerResult]:
        cfg, layers = self.config, self.layers
        start = time.perf_counter()
        device = self.layers_device
        self._init(jobs)
        rows = [[tokenize_pair(tokenizer, p, c, cfg.max_length, eos=False) for p, c in job.sequences] for job in jobs]
        plans = [self._plan(job, len(r)) for job, r in zip(jobs, rows)]
        lrs = [job.lr or cfg.lr for job in jobs]
        params = [p for layer in layers.values() for p in (layer.A, layer.B)]
        moments = [(torch.zeros_like(p), torch.zeros_like(p)) for p in params]
        losses: list[list[float]] = [[] for _ in jobs]
        errors: list[str | None] = [None] * len(jobs)
        model.train()
        for step in range(max(len(plan) for plan in plans)):
            active = [k for k, plan in enumerate(plans) if step < len(plan) and errors[k] is None]
            if not active:
                break
            batch_rows = [rows[k][i] for k in active for i in plans[k][step]]
            owner = torch.tensor([k for k in active for _ in plans[k][step]], device=device)
            batch = {n: t.to(device) for n, t in collate(batch_rows, tokenizer.pad_token_id).items()}
            labels = batch.pop("labels")
            with routed(layers, owner):
                logits = model(**batch).logits
            per_adapter = self._adapter_losses(logits, labels, owner, len(jobs))
            finite = torch.isfinite(per_adapter)
            for k in active:
                if not finite[k]:
                    errors[k] = f"inner loss is {per_adapter[k].item()} at step {step}"
                else:
                    losses[k].append(per_adapter[k].item())
            stepping = [k for k in active if errors[k] is None]
            if stepping:
                per_adapter[stepping].sum().backward()
                self._adamw_step(params, moments, stepping, step, lrs, plans)
            for p in params:
                p.grad = None
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
        self._answer(tokenizer, jobs, results)
        seconds = (time.perf_counter() - start) / len(jobs)  # the group's wall time, shared evenly
        for result in results:
            result.seconds = seconds
        return results

    def _init(self, jobs: list[InnerJob]) -> None:
        """Seeded like peft's reset_lora_parameters: kaiming-uniform A layer by layer, B zero."""
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            for k, job in enumerate(jobs):
                torch.manual_seed(job.seed)
                for layer in self.layers.values():
                    a = torch.empty_like(layer.A[k])
                    nn.init.kaiming_uniform_(a, a=math.sqrt(5))
                    layer.A[k] = a
                    layer.B[k].zero_()

    def _plan(self, job: InnerJob, n: int) -> list[list[int]]:
        """Row indices of every optimiser step, in SequentialLoRA's seeded order."""
        order, bs, plan = random.Random(job.seed), self.config.batch_size, []
        for _ in range(job.epochs or self.config.epochs):
            index = list(range(n))
            order.shuffle(index)
            plan += [index[b : b + bs] for b in range(0, n, bs)]
        return plan

    @staticmethod
    def _adapter_losses(logits: torch.Tensor, labels: torch.Tensor, owner: torch.Tensor, k: int) -> torch.Tensor:
        """Mean next-token loss of each adapter's rows (NaN for adapters without rows)."""
        shift_labels = labels[:, 1:]
        token = F.cross_entropy(logits[:, :-1].transpose(1, 2).float(), shift_labels, ignore_index=IGNORE, reduction="none")
        mask = (shift_labels != IGNORE).float()
        sums = torch.zeros(k, device=logits.device).index_add(0, owner, (token * mask).sum(1))
        counts = torch.zeros(k, device=logits.device).index_add(0, owner, mask.sum(1))
        return sums / counts

    @torch.no_grad()
    def _adamw_step(self, params, moments, stepping: list[int], step: int, lrs: list[float], plans) -> None:
        """torch.optim.AdamW (no weight decay) per adapter, after per-adapter gradient clipping."""
        cfg = self.config
        idx = torch.tensor(stepping, device=params[0].device)
        sq = sum(p.grad[idx].pow(2).flatten(1).sum(1) for p in params)
        clip = (cfg.max_grad_norm / (sq.sqrt() + 1e-6)).clamp(max=1.0)
        lr = torch.tensor([lrs[k] * (1 - step / len(plans[k])) for k in stepping], device=idx.device)
        b1, b2 = BETAS
        t = step + 1  # every adapter still stepping has taken exactly `step` steps before
        for p, (m, v) in zip(params, moments):
            shape = (-1,) + (1,) * (p.dim() - 1)
            g = p.grad[idx] * clip.view(shape)
            m[idx] = m[idx] * b1 + g * (1 - b1)
            v[idx] = v[idx] * b2 + g * g * (1 - b2)
            denom = (v[idx].sqrt() / math.sqrt(1 - b2**t)) + EPS
            p[idx] = p[idx] - (lr / (1 - b1**t)).view(shape) * m[idx] / denom

    def _answer(self, tokenizer, jobs: list[InnerJob], results: list[InnerResult]) -> None:
        """All questions of all healthy adapters in one generation call, each row on its adapter."""
        live = [k for k, r in enumerate(results) if r.error is None]
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
        return next(iter(self.layers.values())).A.device

    def save_adapter(self, k: int, directory: str | Path, base_name: str = "") -> Path:
        """Adapter ``k`` of the last group in plain peft format (``PeftModel.from_pretrained`` loads it)."""
        from peft import LoraConfig

        cfg, out = self.config, Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        tensors = {}
        for name, layer in self.layers.items():
            tensors[f"base_model.model.{name}.lora_A.weight"] = layer.A[k].detach().contiguous().cpu()
            tensors[f"base_model.model.{name}.lora_B.weight"] = layer.B[k].detach().contiguous().cpu()
        save_file(tensors, out / "adapter_model.safetensors")
        LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=sorted(
            {n.rsplit(".", 1)[-1] for n in self.layers}), base_model_name_or_path=base_name,
            task_type="CAUSAL_LM").save_pretrained(out)
        return out
