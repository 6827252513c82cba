"""Batched multi-LoRA inner engine: K independent adapters trained in one forward/backward.

Every targeted ``nn.Linear`` of the frozen base gets K stacked LoRA pairs. A step packs all
active adapters' sequences into bins of whole rows and routes each token to its adapter; the loss
is the sum of per-adapter mean token losses (logits only where there is a label), so adapter k's
gradient is exactly its own. ``StackedAdamW`` gives each adapter its own moments, learning rate,
linear schedule and gradient clipping, and each adapter runs its own number of epochs, so the
result matches training the K adapters one after another (``SequentialLoRA``) step for step:
same seeded initialisation, same batch order. An adapter whose loss turns NaN/inf stops; the
others carry on. The memory plan (``memory.py``) sets how many adapters train together, how
many tokens go into each forward/backward (gradients accumulate across them) and how many rows
each answer chunk holds, so a run stays inside ``inner.memory_budget``.
"""

from __future__ import annotations

import math
import random
import time
from pathlib import Path

import torch
from torch import nn

from ..lm.lora_io import Factors, save_peft, to_cpu
from ..lm.sft import Rows, label_count, pack, packed_losses, row_losses, tokenize_pair
from . import memory
from .engine import InnerEngine, InnerJob, InnerResult
from .multi_lora import inject, routed
from .stacked_adamw import StackedAdamW


class BatchedLoRA(InnerEngine):
    """Trains up to ``config.max_adapters`` jobs' adapters together, then answers all their questions at once."""

    def _run(self, base: nn.Module, tokenizer, jobs: list[InnerJob]) -> list[InnerResult]:
        cfg = self.config
        rows = [[tokenize_pair(tokenizer, p, c, cfg.max_length, eos=job.eos) for p, c in job.sequences] for job in jobs]
        if getattr(self, "base", None) is not base:  # a retry after out-of-memory reuses the injected layers
            lengths = [len(ids) for job_rows in rows for ids, _ in job_rows]
            step_tokens = cfg.batch_size * sum(lengths) / len(lengths)  # one adapter's step, on average
            wanted = min(len(jobs), max(1, int(cfg.pack_length // step_tokens)))
            self._prepare(base, max(lengths), wanted)
        results = []
        for start in range(0, len(jobs), self.width):
            group = slice(start, start + self.width)
            results += self._run_group(base, tokenizer, jobs[group], rows[group])
            self._done(len(jobs[group]))
        return results

    def release(self) -> None:
        self.base = self.layers = self.plan = None

    def _prepare(self, base: nn.Module, longest: int, wanted: int) -> None:
        """Inject one adapter, measure the memory plan with it, then hold as many adapters as fit, at
        most ``wanted``: as many as one ``pack_length`` bin of tokens a step holds. More adapters a
        step make longer bins (attention grows with their square), more passes within the memory
        budget and more optimiser state per step, and trained slower (docs/performance.md)."""
        cfg = self.config
        self.base, self.width, self.plan = base, 1, None
        self.layers = inject(base, cfg.target_modules, 1, cfg.r, cfg.alpha / cfg.r, cfg.dropout)
        budget = memory.budget_bytes(cfg.memory_budget, self.layers_device)
        self.plan = memory.plan(budget, base, self.layers, self._probe, cfg.checkpointing)
        self.width = self.plan.width(min(cfg.max_adapters, wanted), longest)
        for layer in self.layers.values():
            layer.resize(self.width)

    def _probe(self, tokens: int) -> None:
        """One adapter's forward over ``tokens`` tokens, as a training step runs it (the plan counts what it saves)."""
        ids = list(range(1, tokens + 1))
        self._init([InnerJob([("", "")], [], seed=0)])
        was_training = self.base.training
        self.base.train()
        with torch.random.fork_rng(devices=[]):
            self._losses(self.base, {0: [(ids, ids)]}, {0: tokens - 1}, backward=False)
        self.base.train(was_training)

    def _run_group(self, model: nn.Module, tokenizer, jobs: list[InnerJob], rows: list[Rows]) -> list[InnerResult]:
        cfg, layers, width = self.config, self.layers, self.width
        start = time.perf_counter()
        self._init(jobs)
        plans = [self._plan(job, len(r)) for job, r in zip(jobs, rows)]
        room = self.plan.activation_room(width)
        errors: list[str | None] = [None] * len(jobs)
        for k, job_rows in enumerate(rows):
            longest = max(len(ids) for ids, _ in job_rows)
            if self.plan.activation_bytes(longest, longest) > room:
                errors[k] = (
                    f"a sequence of {longest} tokens does not fit inner.memory_budget "
                    f"({self.plan.budget / memory.GiB:.2f} GiB) beside {width} adapters"
                )
        lrs = [job.lr or cfg.lr for job in jobs] + [0.0] * (width - len(jobs))
        optimizer = StackedAdamW([p for layer in layers.values() for p in (layer.A, layer.B)], width)
        losses: list[list[float]] = [[] for _ in jobs]
        model.train()
        for step in range(max(len(plan) for plan in plans)):
            active = [k for k, plan in enumerate(plans) if step < len(plan) and errors[k] is None]
            if not active:
                break
            batch = {k: [rows[k][i] for i in plans[k][step]] for k in active}
            counts = {k: label_count(b) for k, b in batch.items()}
            per_adapter = self._losses(model, batch, counts)
            if not torch.isfinite(per_adapter[active]).all():
                # Packed rows share attention, so one adapter's NaN reaches the others' losses and
                # gradients: find the adapters whose own loss is not finite, stop them, and redo the
                # step without them.
                optimizer.zero_grad()
                with torch.no_grad():
                    for k in active:
                        value = self._losses(model, {k: batch[k]}, counts, backward=False)[k].item()
                        if not math.isfinite(value):
                            errors[k] = f"inner loss is {value} at step {step}"
                batch = {k: b for k, b in batch.items() if errors[k] is None}
                per_adapter = self._losses(model, batch, counts) if batch else per_adapter
            stepping = []
            for k, value in zip(list(batch), per_adapter[list(batch)].tolist()):
                if math.isfinite(value):
                    stepping.append(k)
                    losses[k].append(value)
                else:
                    errors[k] = f"inner loss is {value} at step {step}"
            if stepping:
                on = [k in stepping for k in range(width)]
                optimizer.clip_grad_norm_(cfg.max_grad_norm)  # per adapter, as in SequentialLoRA
                optimizer.step([lr * (1 - step / len(plans[k])) if on[k] else 0.0 for k, lr in enumerate(lrs)], on)
            optimizer.zero_grad()
        del optimizer  # its moments are not needed to answer
        model.eval()
        results = []
        for k, job in enumerate(jobs):
            epochs = job.epochs or cfg.epochs
            per_epoch = len(plans[k]) // epochs
            last = losses[k][-per_epoch:] if errors[k] is None else []
            results.append(
                InnerResult(
                    answers=[],
                    loss=sum(last) / len(last) if last else math.nan,
                    steps=len(losses[k]),
                    error=errors[k],
                    extra={"losses": losses[k]},
                )
            )
            if job.keep_adapter and errors[k] is None:
                results[k].extra["adapter"] = to_cpu(self.factors(k))
        trained = time.perf_counter()
        self._answer(tokenizer, jobs, results)
        self._logprobs(tokenizer, jobs, results)
        elapsed = time.perf_counter() - start
        for result in results:  # the group's wall time, shared evenly
            result.seconds = elapsed / len(jobs)
            result.extra["train_seconds"] = (trained - start) / len(jobs)
        return results

    def _losses(
        self, model: nn.Module, batch: dict[int, Rows], counts: dict[int, int], backward: bool = True
    ) -> torch.Tensor:
        """Mean next-token loss of each adapter's rows (NaN for absent adapters), over ``counts[k]``
        label tokens; ``backward``: also accumulate each adapter's gradient. The rows go through in
        forward/backward groups that fit the memory plan, each group packed into bins."""
        device = self.layers_device
        sums = torch.zeros(self.width, device=device)
        lengths = {k: [len(ids) for ids, _ in rows] for k, rows in batch.items()}
        groups = (
            [{k: list(range(len(n))) for k, n in lengths.items()}]
            if self.plan is None  # the probe
            else memory.split_tokens(lengths, self.plan, self.plan.activation_room(self.width), self.config.pack_length)
        )
        total = torch.tensor([float(counts.get(k, 0)) for k in range(self.width)], device=device)
        for group in groups:
            rows = [batch[k][i] for k, index in group.items() for i in index]
            packed = pack(rows, device, self.config.pack_length)
            row_owner = torch.tensor([k for k, index in group.items() for _ in index], device=device)
            owner = row_owner[packed.source].masked_fill(packed.padding, -1)  # padding: any free slot
            with routed(self.layers, owner):  # backward too: activation checkpointing recomputes routed layers
                token_loss = packed_losses(model, packed)
                group_sums = torch.zeros(self.width, device=device).index_add(0, owner[packed.keep], token_loss)
                if backward and torch.is_grad_enabled():
                    (group_sums / total.clamp(min=1)).sum().backward()
            sums += group_sums.detach()
        return sums / total  # 0 / 0: NaN for an absent adapter

    def _init(self, jobs: list[InnerJob]) -> None:
        """Seeded like peft's reset_lora_parameters: kaiming-uniform A layer by layer, B zero."""
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            for k, job in enumerate(jobs):
                torch.manual_seed(job.seed)
                for layer in self.layers.values():
                    nn.init.kaiming_uniform_(layer.A[k], a=math.sqrt(5))
                    nn.init.zeros_(layer.B[k])
            for layer in self.layers.values():  # unused slots of a short last group stay zero
                layer.A[len(jobs) :].zero_()
                layer.B[len(jobs) :].zero_()

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
        ``run``'s ``answers`` given each healthy adapter's factors)."""
        live = [k for k, r in enumerate(results) if r.error is None]
        if self._answers is not None and live:
            for k, answers in zip(live, self._answers([jobs[k] for k in live], [self.factors(k) for k in live])):
                results[k].answers = answers
            return
        questions = [q for k in live for q in jobs[k].questions]
        if not questions:
            return
        # the targets' log-probabilities come from the answers' own prefill when every job has targets
        scored = all(jobs[k].targets for k in live)
        targets = [t for k in live for t in jobs[k].targets] if scored else []
        owner = torch.tensor([k for k in live for _ in jobs[k].questions], device=self.layers_device)
        longest_target = max(len(ids) for ids in tokenizer(targets)["input_ids"]) if targets else 0
        row_tokens = max(len(ids) for ids in tokenizer(questions)["input_ids"]) + self.config.answer_tokens
        row_tokens += longest_target
        size = self.plan.answer_rows(row_tokens, self.width * self.plan.per_adapter // 4, self.config.eval_batch_size)
        answers, logprobs = [], []
        for s in range(0, len(questions), size):  # one generation chunk at a time, each row on its adapter
            with routed(self.layers, owner[s : s + size]):
                if scored:
                    chunk, values = self.answer_scored(
                        self.base, tokenizer, questions[s : s + size], targets[s : s + size]
                    )
                    answers += chunk
                    logprobs += values
                else:
                    answers += self.answer(self.base, tokenizer, questions[s : s + size])
        start = 0
        for k in live:
            n = len(jobs[k].questions)
            results[k].answers = answers[start : start + n]
            if scored:
                results[k].logprobs = logprobs[start : start + n]
            start += n

    def _logprobs(self, tokenizer, jobs: list[InnerJob], results: list[InnerResult]) -> None:
        """Each healthy adapter's teacher-forced log-probability of its job's targets where answering did
        not score them already (answers from a backend that serves adapters), all adapters' rows
        packed together in forward passes that fit the memory plan, each token on its adapter."""
        cfg = self.config
        rows = {
            k: [tokenize_pair(tokenizer, q, t, cfg.max_length, eos=False) for q, t in zip(job.questions, job.targets)]
            for k, (job, r) in enumerate(zip(jobs, results))
            if job.targets and r.error is None and r.logprobs is None
        }
        if not rows:
            return
        lengths = {k: [len(ids) for ids, _ in r] for k, r in rows.items()}
        values: dict[int, list[float]] = {k: [math.nan] * len(r) for k, r in rows.items()}
        device = self.layers_device
        with torch.no_grad():
            for group in memory.split_tokens(
                lengths, self.plan, self.plan.activation_room(self.width), cfg.pack_length
            ):
                index = [(k, i) for k, picked in group.items() for i in picked]
                packed = pack([rows[k][i] for k, i in index], device, cfg.pack_length)
                owner = torch.tensor([k for k, _ in index], device=device)[packed.source]
                owner = owner.masked_fill(packed.padding, -1)
                with routed(self.layers, owner):
                    losses = row_losses(self.base, packed, len(index)).tolist()
                for (k, i), loss in zip(index, losses):
                    values[k][i] = -loss
        for k, v in values.items():
            results[k].logprobs = v

    @property
    def layers_device(self) -> torch.device:
        return next(iter(self.layers.values())).base.weight.device

    def factors(self, k: int) -> Factors:
        """Adapter ``k`` of the last group, as ``{module name: (A, B, scale)}``."""
        return {name: (layer.A[k].detach(), layer.B[k].detach(), layer.scale) for name, layer in self.layers.items()}

    def save_adapter(self, k: int, directory: str | Path, base_name: str = "") -> Path:
        """Adapter ``k`` of the last group in plain peft format (``PeftModel.from_pretrained`` loads it)."""
        return save_peft(self.factors(k), directory, base_name)
