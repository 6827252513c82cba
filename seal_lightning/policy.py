"""SEALPolicy: the outer policy, a causal LM that writes self-edits and is trained by ReST-EM.

``training_step`` is the M-step (SFT on the kept self-edits the ``SelfEditCallback`` attached to
the batch). ``validation_step``/``test_step`` score, on held-out contexts, the task's metric
after no update, after an update on the context alone, after updates on self-edits sampled
from the base model (before RL) and from the current policy, and the best of those samples
(oracle).
"""

from __future__ import annotations

import copy
import hashlib
import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from peft import LoraConfig, PeftModel, get_peft_model

from .backends import VLLMConfig, make_backend
from .dist import gather
from .results import ROUNDS_DIR, format_matrix, format_table, summarize
from .engines import make_engine
from .inner import InnerConfig, InnerResult
from .knowledge import KnowledgeTask
from .models import SMOLLM2, load_model
from .sft import IGNORE, collate, tokenize_pair
from .task import SelfEditError, Task

CONDITIONS = ("no_update", "passage", "synthetic", "base_self_edit", "self_edit", "oracle")
DEFAULT_CONDITIONS = ("no_update", "passage", "base_self_edit", "self_edit", "oracle")


def grade_each(task: Task, contexts: list[dict], questions: list[list[str]], answers: list[str]
               ) -> list[dict[str, float]]:
    """Each context's scores from its own slice of ``answers`` (to all ``questions``, flattened in order)."""
    scores, start = [], 0
    for context, qs in zip(contexts, questions):
        scores.append(task.grade(context, answers[start : start + len(qs)]))
        start += len(qs)
    return scores


def derive_seed(*parts: object) -> int:
    """A stable 31-bit seed from any parts (independent of Python's hash randomisation)."""
    return int(hashlib.sha256(repr(parts).encode()).hexdigest()[:8], 16) & 0x7FFFFFFF


@dataclass(frozen=True)
class PolicyLoRA:
    """LoRA on the policy (set ``model.lora`` to null to finetune all weights)."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: str | list[str] = "all-linear"


@dataclass(frozen=True)
class SamplingConfig:
    """How self-edits are sampled from the policy."""

    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    batch_size: int = 32


@dataclass(frozen=True)
class EvalConfig:
    """Held-out evaluation: which conditions, and how many self-edits are averaged per context.

    ``conditions`` may add ``synthetic``: a self-edit written elsewhere, read from the DataModule's
    ``synthetic`` file. ``prompts``: also score the current policy's self-edits written from each of these self-edit
    prompts (names in ``knowledge.PROMPTS`` or templates), as conditions ``self_edit:<prompt>``.
    ``continued_pretraining``: also one update on all evaluated contexts at once (``seal_lightning.cpt``).
    ``forgetting``: also apply the evaluated contexts' self-edits one after another to one model and
    record the retention matrix (``seal_lightning.forgetting``).
    ``fit_conditions``: the conditions of validations inside ``seal fit`` (after each round), when
    they should differ from ``conditions`` (e.g. only ``self_edit``; the baselines are scored once,
    before training, with ``--validate_before_fit true``).
    """

    conditions: list[str] = field(default_factory=lambda: list(DEFAULT_CONDITIONS))
    fit_conditions: list[str] | None = None
    prompts: list[str] = field(default_factory=list)
    continued_pretraining: bool = False
    forgetting: bool = False
    samples: int = 1
    seed: int = 1234


@dataclass
class Outcome:
    """Scores of one evaluation (before any update, or after one self-edit's inner update), or the
    error that scored it zero."""

    scores: dict[str, float]
    result: InnerResult | None = None
    error: str | None = None


class SEALPolicy(L.LightningModule):
    """The self-editing policy.

    Args:
        model: model spec (see ``seal_lightning.models``): ``smollm2-135m``, ``tiny-random-llama``,
            a ``.gguf`` file, an HF model directory or hub name.
        task: the task plug-in (default: knowledge incorporation).
        dtype: torch dtype of the weights.
        lora: LoRA on the policy; null finetunes all weights.
        inner: inner-loop hyperparameters.
        sampling: self-edit sampling.
        eval: held-out evaluation.
        lr: policy learning rate (M-step).
        weight_decay: policy AdamW weight decay.
        sft_epochs: passes over a batch's kept self-edits per M-step.
        sft_batch_size: kept pairs per policy optimiser step.
        sft_max_length: prompt + self-edit tokens kept for SFT.
        grad_clip: policy gradient clipping (norm).
        chat_template: wrap prompts in the tokenizer's chat template when it has one.
        generation: ``hf`` (transformers generate; CPU and GPU) or ``vllm`` (GPU, LoRA policy;
            see ``seal_lightning.backends``) for self-edit sampling and answers.
        vllm: vLLM settings when ``generation`` is ``vllm``.
    """

    def __init__(
        self,
        model: str = SMOLLM2,
        task: Task | None = None,
        dtype: str = "float32",
        lora: PolicyLoRA | None = PolicyLoRA(),
        inner: InnerConfig = InnerConfig(),
        sampling: SamplingConfig = SamplingConfig(),
        eval: EvalConfig = EvalConfig(),
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        sft_epochs: int = 1,
        sft_batch_size: int = 4,
        sft_max_length: int = 1024,
        grad_clip: float = 1.0,
        chat_template: bool = True,
        generation: str = "hf",
        vllm: VLLMConfig = VLLMConfig(),
    ) -> None:
        super().__init__()
        for name in ("conditions", "fit_conditions"):
            unknown = set(getattr(eval, name) or []) - set(CONDITIONS)
            if unknown:
                raise ValueError(f"model.eval.{name}: unknown {sorted(unknown)}; choose from {list(CONDITIONS)}")
        self.save_hyperparameters(
            {"model": model, "task": type(task or KnowledgeTask()).__name__, "dtype": dtype,
             "lora": lora and asdict(lora), "inner": asdict(inner), "sampling": asdict(sampling),
             "eval": asdict(eval), "lr": lr, "weight_decay": weight_decay, "sft_epochs": sft_epochs,
             "sft_batch_size": sft_batch_size, "sft_max_length": sft_max_length, "grad_clip": grad_clip,
             "generation": generation}
        )
        self.spec, self.dtype_name = model, dtype
        self.task = task or KnowledgeTask()
        self.prompt_variants = {p: self.task.with_prompt(p) for p in eval.prompts}
        self.lora, self.inner_config, self.sampling, self.eval_config = lora, inner, sampling, eval
        self.engine = make_engine(inner)
        self.generation = make_backend(generation, model, dtype, vllm, lora, inner)
        if self.generation.serves_adapters:
            self.engine.adapter_answers = self._answer_adapters
        self.weights_version = 0  # bumped whenever the policy's weights change (vLLM republishes then)
        self.use_chat_template = chat_template
        self.automatic_optimization = False  # the M-step may take several optimiser steps per batch
        self.strict_loading = False  # checkpoints hold only the trainable weights
        self.model: torch.nn.Module | None = None
        self.tokenizer = None
        self._eval_rows: list[dict] = []
        self._eval_contexts: list[dict] = []  # for continued pretraining / forgetting at the end of the stage

    # --- model ---------------------------------------------------------------------------------
    def configure_model(self) -> None:
        if self.model is not None:
            return
        model, self.tokenizer = load_model(self.spec, self.dtype_name)
        if self.lora is not None:
            config = LoraConfig(r=self.lora.r, lora_alpha=self.lora.alpha, lora_dropout=self.lora.dropout,
                                target_modules=self.lora.target_modules)
            model = get_peft_model(model, config)
        self.model = model.train()

    def frozen_copy(self) -> torch.nn.Module:
        """A frozen copy of the current policy weights (LoRA merged) for inner loops to modify."""
        model = copy.deepcopy(self.model)
        if isinstance(model, PeftModel):
            model = model.merge_and_unload()
        model.requires_grad_(False).eval()
        return model

    def format_prompt(self, text: str) -> str:
        if self.use_chat_template and self.tokenizer.chat_template:
            messages = [{"role": "user", "content": text}]
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return text

    # --- E-step pieces (used by SelfEditCallback and by evaluation) ---------------------------
    def sample_self_edits(self, contexts: list[dict], k: int, seed: int, base: bool = False,
                          task: Task | None = None) -> list[list[str]]:
        """``k`` sampled self-edits per context; ``base=True`` samples from the model before RL;
        ``task`` overrides the self-edit prompt (a prompt variant).

        A prompt that leaves no room for ``sampling.max_new_tokens`` in the model's context is not
        sampled (its self-edits are empty; ``score_updates`` scores that context 0 with the reason)."""
        prompts = [self.format_prompt((task or self.task).self_edit_prompt(c)) for c in contexts]
        s = self.sampling
        fits = [self._overflow(p, s.max_new_tokens) is None for p in prompts]
        texts: list[str] = []
        kept = [p for p, f in zip(prompts, fits) if f]
        if kept:
            texts = self.generation.sample(
                self.model, self.tokenizer, self.weights_version, kept, k, base, max_new_tokens=s.max_new_tokens,
                temperature=s.temperature, top_p=s.top_p, seed=seed, batch_size=s.batch_size,
                choices=(task or self.task).self_edit_choices(),
            )
        rows = iter(texts[i : i + k] for i in range(0, len(texts), k))
        return [next(rows) if f else [""] * k for f in fits]

    def run_inner(self, jobs: list, base: torch.nn.Module | None = None) -> list[InnerResult]:
        """Inner updates of ``jobs`` on ``base`` (default: a frozen copy of the current policy), which the
        engine may modify; gradients on, even in evaluation."""
        with torch.inference_mode(False), torch.enable_grad():
            return self.engine.run(self.frozen_copy() if base is None else base, self.tokenizer, jobs)

    def question_prompts(self, context: dict) -> list[str]:
        """The context's held-out questions as the model sees them (chat-formatted when the task says so)."""
        task = self.task
        return [self.format_prompt(q) if task.chat_questions else q for q in task.questions(context)]

    def score_updates(
        self, contexts: list[dict], edits: list[list[str | None]], seed: int
    ) -> tuple[list[Outcome], list[list[Outcome]]]:
        """The pre-update ``Outcome`` per context, and one per edit (``None`` = the context alone).

        A context whose questions do not fit the model scores 0 everywhere, with the reason as error.
        Inner loops train even inside Lightning's validation/test loops, which run in inference mode.
        """
        with torch.inference_mode(False), torch.enable_grad():
            return self._score_updates(contexts, edits, seed)

    def _score_updates(
        self, contexts: list[dict], edits: list[list[str | None]], seed: int
    ) -> tuple[list[Outcome], list[list[Outcome]]]:
        base = self.frozen_copy()
        task, tok = self.task, self.tokenizer
        questions = [self.question_prompts(c) for c in contexts]
        baseline = [Outcome(task.zero(), error=self._too_long(c, qs)) for c, qs in zip(contexts, questions)]
        jobs, slots = [], []
        outcomes = [[Outcome(task.zero(), error=before.error) for _ in row] for before, row in zip(baseline, edits)]
        for ci, (context, row) in enumerate(zip(contexts, edits)):
            for si, edit in enumerate(row):
                if baseline[ci].error:
                    continue
                try:
                    # seeded by the text, so equal self-edits get equal adapters across conditions
                    job = task.inner_job(context, edit, derive_seed(seed, ci, edit))
                except SelfEditError as err:
                    outcomes[ci][si].error = str(err)
                    continue
                job.questions = questions[ci]
                jobs.append(job)
                slots.append((ci, si))
        fits = [ci for ci, before in enumerate(baseline) if before.error is None]
        flat = self.answer_with(base, [q for ci in fits for q in questions[ci]])
        graded = grade_each(task, [contexts[ci] for ci in fits], [questions[ci] for ci in fits], flat)
        for ci, scores in zip(fits, graded):
            baseline[ci].scores = scores
        for (ci, si), result in zip(slots, self.engine.run(base, tok, jobs)):
            outcome = outcomes[ci][si]
            outcome.result, outcome.error = result, result.error
            if result.error is None:
                outcome.scores = task.grade(contexts[ci], result.answers)
        return baseline, outcomes

    def answer_with(self, frozen: torch.nn.Module, questions: list[str]) -> list[str]:
        """Greedy answers of ``frozen``: the current policy's merged copy, or one modified from it."""
        cfg = self.inner_config
        return self.generation.answer(self.model, frozen, self.tokenizer, self.weights_version, questions,
                                      max_new_tokens=cfg.answer_tokens, stop=cfg.answer_stop,
                                      batch_size=cfg.eval_batch_size)

    def _answer_adapters(self, jobs: list, factors: list) -> list[list[str]]:
        """Inner answers through a backend that serves adapters (vLLM)."""
        cfg = self.inner_config
        return self.generation.answer_adapters(self.model, jobs, factors, max_new_tokens=cfg.answer_tokens,
                                               stop=cfg.answer_stop)

    def _too_long(self, context: dict, questions: list[str]) -> str | None:
        """Why a context cannot be used (its self-edit prompt or a question does not fit the model), or None.

        Such a context is rejected (scored 0 with this reason), never silently truncated."""
        prompt = self.format_prompt(self.task.self_edit_prompt(context))
        checks = [("self-edit prompt", prompt, self.sampling.max_new_tokens)]
        checks += [("question", q, self.inner_config.answer_tokens) for q in questions]
        for what, text, new_tokens in checks:
            reason = self._overflow(text, new_tokens)
            if reason:
                return f"{what} {reason}"
        return None

    def _overflow(self, text: str, new_tokens: int) -> str | None:
        limit = getattr(self.model.config, "max_position_embeddings", None)
        n = len(self.tokenizer(text)["input_ids"])
        if limit and n + new_tokens > limit:
            return f"has {n} tokens; with {new_tokens} new tokens it exceeds the model's context of {limit}"
        return None

    # --- M-step --------------------------------------------------------------------------------
    def sft_loss(self, pairs: list[tuple[str, str]], tokens: int | None = None) -> torch.Tensor:
        """Loss on the self-edit tokens (+ EOS) of (prompt, self-edit) pairs: summed over tokens and
        divided by ``tokens`` (default: their own count, i.e. the token mean)."""
        rows = self._sft_rows(pairs)
        batch = {k: v.to(self.device) for k, v in collate(rows, self.tokenizer.pad_token_id).items()}
        logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        labels = batch["labels"][:, 1:]
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE,
                               reduction="sum")
        return loss / (tokens or _label_count(rows))

    def _sft_rows(self, pairs: list[tuple[str, str]]) -> list[tuple[list[int], list[int]]]:
        return [tokenize_pair(self.tokenizer, p, c, self.hparams.sft_max_length, eos=True) for p, c in pairs]

    def training_step(self, batch: dict, batch_idx: int) -> None:
        """SFT on the batch's kept pairs (gathered from all ranks, identical on each). Each optimiser
        step takes ``sft_batch_size`` of them, split across ranks; each rank's summed loss is divided
        by the step's total token count, so the synchronised gradient is the step's token mean
        whatever the number of processes. Ranks left without a pair still run a zero-weighted pass,
        so every rank makes the same collective calls."""
        if "kept" not in batch:
            raise RuntimeError("no self-edits on the batch: add seal_lightning.SelfEditCallback to trainer.callbacks")
        pairs = batch["kept"]
        if not pairs:
            return
        optimizer = self.optimizers()
        world, rank = self.trainer.world_size, self.trainer.global_rank
        order = random.Random(derive_seed("sft", self.current_epoch, batch_idx))
        size, losses = self.hparams.sft_batch_size, []
        for _ in range(self.hparams.sft_epochs):
            index = list(range(len(pairs)))
            order.shuffle(index)
            for start in range(0, len(index), size):
                step = [pairs[i] for i in index[start : start + size]]
                mine = step[rank::world]
                loss = self.sft_loss(mine or step[:1], _label_count(self._sft_rows(step))) * (world if mine else 0)
                self.manual_backward(loss)
                self.clip_gradients(optimizer, gradient_clip_val=self.hparams.grad_clip, gradient_clip_algorithm="norm")
                optimizer.step()
                self.weights_version += 1
                optimizer.zero_grad(set_to_none=True)
                losses.append(loss.detach())
        self.log("train/sft_loss", torch.stack(losses).mean(), prog_bar=True, batch_size=len(pairs), sync_dist=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        params = [p for p in self.parameters() if p.requires_grad]
        return torch.optim.AdamW(params, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)

    # --- evaluation ----------------------------------------------------------------------------
    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch["contexts"])

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch["contexts"])

    def _evaluate(self, contexts: list[dict]) -> None:
        cfg = self.eval_config
        in_fit = self.trainer.state.fn == TrainerFn.FITTING and cfg.fit_conditions is not None
        conditions = cfg.fit_conditions if in_fit else cfg.conditions  # in_fit: no extras either
        variants, n = {} if in_fit else self.prompt_variants, cfg.samples
        if not in_fit and (cfg.continued_pretraining or cfg.forgetting):
            self._eval_contexts += contexts
        if "base_self_edit" in conditions and not isinstance(self.model, PeftModel):
            rank_zero_warn("base_self_edit needs a LoRA policy (the base is the policy without its adapter); skipped")
            conditions = [c for c in conditions if c != "base_self_edit"]
        seed = derive_seed(cfg.seed, [c["id"] for c in contexts])
        edits: list[list[str | None]] = [[] for _ in contexts]
        labels: list[str] = []
        if "passage" in conditions:
            edits = [row + [None] for row in edits]
            labels.append("passage")
        if "synthetic" in conditions:
            missing = [c["id"] for c in contexts if not c.get("synthetic")]
            if missing:
                raise ValueError(f"model.eval.conditions has 'synthetic' but context {missing[0]!r} has no "
                                 "synthetic text (data.init_args.synthetic)")
            edits = [row + [c["synthetic"]] for row, c in zip(edits, contexts)]
            labels.append("synthetic")
        for condition in ("base_self_edit", "self_edit"):
            if condition in conditions:
                sampled = self.sample_self_edits(contexts, n, seed, base=condition == "base_self_edit")
                edits = [row + list(s) for row, s in zip(edits, sampled)]
                labels += [condition] * n
        for name, variant in variants.items():
            sampled = self.sample_self_edits(contexts, n, seed, task=variant)
            edits = [row + list(s) for row, s in zip(edits, sampled)]
            labels += [f"self_edit:{name}"] * n
        baseline, outcomes = self.score_updates(contexts, edits, seed)
        sampled = [label in ("base_self_edit", "self_edit") for label in labels]
        if "oracle" in conditions and not any(sampled):
            rank_zero_warn("oracle needs self_edit or base_self_edit samples; skipped")
        for context, before, row in zip(contexts, baseline, outcomes):
            error = {"error": before.error} if before.error else {}
            if "no_update" in conditions:
                self._eval_rows.append({"context_id": context["id"], "condition": "no_update", **before.scores, **error})
            for condition in dict.fromkeys(labels):
                picked = [o for o, label in zip(row, labels) if label == condition]
                mean = {k: sum(o.scores[k] for o in picked) / len(picked) for k in picked[0].scores}
                failed = [o.error for o in picked if o.error and o.error != before.error]
                self._eval_rows.append({"context_id": context["id"], "condition": condition, **mean, **error,
                                        **({"errors": failed} if failed else {})})
            if "oracle" in conditions and any(sampled):
                best = max((o.scores for o, s in zip(row, sampled) if s), key=lambda s: s[self.task.metric])
                self._eval_rows.append({"context_id": context["id"], "condition": "oracle", **best, **error})

    def predict_step(self, batch: dict, batch_idx: int) -> list[dict[str, str]]:
        """One self-edit per context from the current policy (``seal predict``; ``SelfEditWriter``
        writes them in the format of ``data.init_args.synthetic``)."""
        contexts = batch["contexts"]
        seed = derive_seed(self.eval_config.seed, [c["id"] for c in contexts])
        edits = self.sample_self_edits(contexts, 1, seed)
        return [{"context_id": c["id"], "text": row[0]} for c, row in zip(contexts, edits)]

    def on_validation_epoch_end(self) -> None:
        self._report("val")

    def on_test_epoch_end(self) -> None:
        self._report("test")

    def _report(self, stage: str) -> None:
        unique: dict[tuple[str, str], dict] = {}
        for row in gather(self._eval_rows):  # padding of a DistributedSampler repeats a context: keep it once
            unique.setdefault((row["context_id"], row["condition"]), row)
        rows, self._eval_rows = list(unique.values()), []
        contexts = list({c["id"]: c for c in gather(self._eval_contexts)}.values())
        self._eval_contexts, retention = [], None
        if contexts and not self.trainer.sanity_checking:  # every rank runs these on the same contexts
            from .cpt import continued_pretraining  # both build on this module
            from .forgetting import forgetting

            if self.eval_config.continued_pretraining:
                rows += continued_pretraining(self, contexts, derive_seed(self.eval_config.seed, "cpt"))
            if self.eval_config.forgetting:
                more, retention = forgetting(self, contexts, derive_seed(self.eval_config.seed, "forgetting"))
                rows += more
                rank_zero_info(format_matrix(retention))
        if not rows:
            return
        summary = summarize(rows)
        for condition, values in summary.items():
            for metric, mean in values.items():
                if metric != "n" and not metric.endswith("_se"):
                    self.log(f"{stage}/{condition}/{metric}", mean, sync_dist=True)  # equal on every rank
        log_dir = self.trainer.log_dir  # a collective under DDP: every rank asks
        if self.trainer.sanity_checking or not self.trainer.is_global_zero:
            return
        labels = {c: self.task.condition_labels.get(c, c) for c in summary}
        rank_zero_info(format_table({labels[c]: v for c, v in summary.items()}, f"{stage} (step {self.global_step})"))
        out = Path(log_dir or self.trainer.default_root_dir)
        out.mkdir(parents=True, exist_ok=True)
        record = json.dumps({"stage": stage, "global_step": self.global_step, "epoch": self.current_epoch,
                             "summary": summary, "labels": labels, "per_context": rows}, indent=1)
        (out / "results.json").write_text(record)
        if retention is not None:
            (out / "forgetting.json").write_text(json.dumps(retention, indent=1))
        if stage == "val" and self.trainer.state.fn == TrainerFn.FITTING:
            # round E+1 is scored at the end of epoch E; `seal_lightning.results.rounds` merges them
            evaluations = Path(self.trainer.default_root_dir) / ROUNDS_DIR
            evaluations.mkdir(parents=True, exist_ok=True)
            (evaluations / f"val_round{self.current_epoch + 1}.json").write_text(record)

    # --- checkpoints ---------------------------------------------------------------------------
    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.weights_version += 1  # the weights about to be loaded are new to any published adapter

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        trainable = {name for name, p in self.named_parameters() if p.requires_grad}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}


def _label_count(rows: list[tuple[list[int], list[int]]]) -> int:
    """Tokens that carry a loss (labels after the first position that are not ignored)."""
    return sum(sum(label != IGNORE for label in labels[1:]) for _, labels in rows)
