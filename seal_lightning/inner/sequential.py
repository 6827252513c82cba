"""The reference inner engine: one peft LoRA adapter, re-initialised (seeded) and trained job after job."""

from __future__ import annotations

import math
import random
import time

import torch
from peft import get_peft_model
from peft.tuners.lora import LoraLayer
from torch import nn

from ..lm.lora_io import peft_factors, to_cpu
from ..lm.sft import batch_losses, collate, tokenize_pair
from .engine import InnerEngine, InnerJob, InnerResult


class SequentialLoRA(InnerEngine):
    """One peft LoRA adapter on the base, re-initialised (seeded) and trained job after job."""

    ADAPTER = "inner"

    def _run(self, base: nn.Module, tokenizer, jobs: list[InnerJob]) -> list[InnerResult]:
        cfg = self.config
        if getattr(self, "_base", None) is not base:  # a retry after out-of-memory reuses the peft model
            self._base, self._model = base, get_peft_model(base, cfg.peft_config(), adapter_name=self.ADAPTER)
        model = self._model
        layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
        params = [p for p in model.parameters() if p.requires_grad]
        results = []
        for job in jobs:
            results.append(self._run_one(model, layers, params, tokenizer, job))
            self._done(1)
        return results

    def release(self) -> None:
        self._base = self._model = None

    def _run_one(self, model, layers, params, tokenizer, job: InnerJob) -> InnerResult:
        start = time.perf_counter()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(job.seed)
            for layer in layers:
                layer.reset_lora_parameters(self.ADAPTER, True)
        loss, losses, error = self._train(model, params, tokenizer, job)
        trained = time.perf_counter()
        answers, logprobs = [], None
        if error is None:
            if self._answers is not None:  # a backend that serves adapters answers; the targets are scored here
                answers = self._answers([job], [peft_factors(model)])[0]
            elif job.targets:
                answers, logprobs = self.answer_scored(model, tokenizer, job.questions, job.targets)
            else:
                answers = self.answer(model, tokenizer, job.questions)
            if job.targets and logprobs is None:
                logprobs = self.logprobs(model, tokenizer, job.questions, job.targets)
        extra = {"losses": losses, "train_seconds": trained - start}
        if job.keep_adapter and error is None:
            extra["adapter"] = to_cpu(peft_factors(model))
        return InnerResult(answers, loss, len(losses), time.perf_counter() - start, error, logprobs, extra)

    def _train(self, model, params, tokenizer, job: InnerJob) -> tuple[float, list[float], str | None]:
        """Train the adapter; returns the last epoch's mean loss, every step's loss, and an error."""
        cfg = self.config
        device = params[0].device
        rows = [tokenize_pair(tokenizer, p, c, cfg.max_length, eos=job.eos) for p, c in job.sequences]
        epochs = job.epochs or cfg.epochs
        total = epochs * math.ceil(len(rows) / cfg.batch_size)
        optimizer = torch.optim.AdamW(params, lr=job.lr or cfg.lr, weight_decay=0.0, foreach=True)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / total)
        order = random.Random(job.seed)
        model.train()
        losses: list[float] = []
        for _ in range(epochs):
            epoch_start = len(losses)
            index = list(range(len(rows)))
            order.shuffle(index)
            for b in range(0, len(index), cfg.batch_size):
                batch = collate([rows[i] for i in index[b : b + cfg.batch_size]], tokenizer.pad_token_id)
                loss = batch_losses(model, {k: v.to(device) for k, v in batch.items()}).mean()
                if not torch.isfinite(loss):
                    optimizer.zero_grad(set_to_none=True)
                    return math.nan, losses, f"inner loss is {loss.item()} at step {schedule.last_epoch}"
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm, foreach=True)
                optimizer.step()
                schedule.step()
                optimizer.zero_grad(set_to_none=True)
                losses.append(loss.item())
        model.eval()
        last = losses[epoch_start:]
        return sum(last) / len(last), losses, None
