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

class MultiLoRALinear(nn.Module):
    """``base(x) + scale * B[k] A[k] x`` where k is the adapter of x's batch row.

    Rows come grouped by adapter (``segments``: ``(k, start, end)``), so each adapter is one
    pair of small matmuls on its own rows: no per-row copy of the adapter weights, and each
    adapter's weights are separate parameters with separate gradients.
    """

    def __init__(self, base: nn.Linear, k: int, r: int, scale: float, dropout: float) -> None:
        super().__init__()
        self.base, self.scale = base, scale
        device = base.weight.device
        self.A = nn.ParameterList(torch.zeros(r, base.in_features, device=device) for _ in range(k))
        self.B = nn.ParameterList(torch.zeros(base.out_features, r, device=device) for _ in range(k))
        self.dropout = nn.Dropout(dropout)
        self.segments: list[tuple[int, int, int]] | None = None  # None = base only

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        if self.segments is None:
            return out
        x = self.dropout(x)
        delta = torch.cat([F.linear(F.linear(x[s:e], self.A[k]), self.B[k]) for k, s, e in self.segments])
        return out + self.scale * delta


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
    """Route batch row i to adapter ``owner[i]``; rows of one adapter must be contiguous."""
    keys, counts = torch.unique_consecutive(owner, return_counts=True)
    if len(set(keys.tolist())) != len(keys):
        raise ValueError("rows of one adapter must be contiguous")
    ends = counts.cumsum(0).tolist()
    segments = [(k, end - n, end) for k, n, end in zip(keys.tolist(), counts.tolist(), ends)]
    for layer in layers.values():
        layer.segments = segments
    try:
        yield
    finally:
        for layer in layers.values():
            layer.segments = None


class BatchedLoRA(InnerEngine):
    """Trains up to ``config.max_adapters`` jobs' adapters together, then answers all their questions at once."""

    def _run(self, base: nn.Module, tokenizer, jobs: list[InnerJob]) -> list[InnerResult]:
        cfg = self.config
        width = min(cfg.max_adapters, len(jobs))
        self.layers = inject(base, cfg.target_modules, width, cfg.r, cfg.alpha / cfg.r, cfg.dropout)
        self.base = base
        results = []
        for start in range(0, len(jobs), width):
            results += self._run_group(base, tokenizer, jobs[start : start + width])
        return results

    def _run_group(self, model: nn.Module, tokenizer, jobs: list[InnerJob]) -> list[InnerResult]:
        cfg, layers = self.config, self.layers
        start = time.perf_counter()
        device = self.layers_device
        self._init(jobs)
        rows = [[tokenize_pair(tokenizer, p, c, cfg.max_length, eos=False) for p, c in job.sequences] for job in jobs]
        plans = [self._plan(job, len(r)) for job, r in zip(jobs, rows)]
        lrs = [job.lr or cfg.lr for job in jobs]
        adapter_params = [[p for layer in layers.values() for p in (layer.A[k], layer.B[k])] for k in range(len(jobs))]
        optimizer = torch.optim.AdamW([{"params": ps} for ps in adapter_params], lr=cfg.lr, weight_decay=0.0, foreach=True)
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
            stepping = []
            for k in active:
                if torch.isfinite(per_adapter[k]):
                    stepping.append(k)
                    losses[k].append(per_adapter[k].item())
                else:
                    errors[k] = f"inner loss is {per_adapter[k].item()} at step {step}"
            if stepping:
                per_adapter[stepping].sum().backward()
                for k in stepping:  # per-adapter clipping and linear schedule, as in SequentialLoRA
                    torch.nn.utils.clip_grad_norm_(adapter_params[k], cfg.max_grad_norm, foreach=True)
                    optimizer.param_groups[k]["lr"] = lrs[k] * (1 - step / len(plans[k]))
                for k in set(range(len(jobs))) - set(stepping):  # AdamW skips params without grads
                    for p in adapter_params[k]:
                        p.grad = None
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
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
        trained = time.perf_counter()
        self._answer(tokenizer, jobs, results)
        elapsed = time.perf_counter() - start
        for result in results:  # the group's wall time, shared evenly
            result.seconds = elapsed / len(jobs)
            result.extra["train_seconds"] = (trained - start) / len(jobs)
        return results

    def _init(self, jobs: list[InnerJob]) -> None:
        """Seeded like peft's reset_lora_parameters: kaiming-uniform A layer by layer, B zero."""
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            for k, job in enumerate(jobs):
                torch.manual_seed(job.seed)
                for layer in self.layers.values():
                    nn.init.kaiming_uniform_(layer.A[k], a=math.sqrt(5))
                    nn.init.zeros_(layer.B[k])

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
        vocab = logits.shape[-1]
        token = F.cross_entropy(logits[:, :-1].reshape(-1, vocab).float(), shift_labels.reshape(-1),
                                ignore_index=IGNORE, reduction="none").view_as(shift_labels)
        mask = (shift_labels != IGNORE).float()
        sums = torch.zeros(k, device=logits.device).index_add(0, owner, (token * mask).sum(1))
        counts = torch.zeros(k, device=logits.device).index_add(0, owner, mask.sum(1))
        return sums / counts

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
        return next(iter(self.layers.values())).base.weight.device

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
