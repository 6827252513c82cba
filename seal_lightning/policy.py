"""SEALPolicy: the outer policy, a causal LM that writes self-edits and is trained by ReST-EM.

``training_step`` is the M-step (SFT on the kept self-edits the ``SelfEditCallback`` attached to
the batch). ``validation_step``/``test_step`` score held-out contexts under the evaluation
conditions (``seal_lightning.evaluation``). What the E-step and evaluation share — sampling,
inner updates, answers — is the policy's ``rollout`` (``seal_lightning.rollout``).
"""

from __future__ import annotations

from dataclasses import asdict

import lightning as L
import torch
from lightning.pytorch.trainer.states import TrainerFn
from peft import get_peft_model

from .distributed import shard_policy
from .evaluation import EvalConfig, Evaluator
from .evaluation.report import report_stage
from .generation import VLLMConfig, make_backend
from .inner import InnerConfig, make_engine
from .lm import SMOLLM2, PolicyLoRA, load_model
from .outer import OuterConfig
from .outer.mstep import micro_batches, step_loss, step_order, with_old_logps
from .outer.objective import Example
from .rollout import Rollout, SamplingConfig
from .tasks import Task
from .tasks.knowledge import KnowledgeTask
from .utils import derive_seed

__all__ = ["EvalConfig", "PolicyLoRA", "SamplingConfig", "SEALPolicy"]


class SEALPolicy(L.LightningModule):
    """The self-editing policy.

    Args:
        model: model spec (see ``seal_lightning.lm.models``): ``smollm2-135m``, ``tiny-random-llama``,
            a ``.gguf`` file, an HF model directory or hub name.
        task: the task plug-in (default: knowledge incorporation).
        dtype: the policy weights' torch dtype: ``float32``, as bf16 moves SmolLM2's logits by ~0.35,
            as much as a small LoRA update (the inner loop's frozen copy: ``inner.dtype``).
        lora: LoRA on the policy; null finetunes all weights.
        inner: inner-loop hyperparameters.
        sampling: self-edit sampling.
        eval: held-out evaluation.
        lr: policy learning rate (M-step).
        weight_decay: policy AdamW weight decay.
        grad_clip: policy gradient clipping (norm).
        chat_template: wrap prompts in the tokenizer's chat template when it has one.
        generation: ``hf`` (transformers generate) or ``vllm`` (``seal_lightning.generation``).
        vllm: vLLM settings when ``generation`` is ``vllm``.
        outer: every setting of the outer loop, the E-step's (``k``, ``reward``, ``keep``, ...)
            and the M-step's (``algorithm``, ``sft_epochs``, ...): ``seal_lightning.outer.OuterConfig``.
        sft_seed: seed of the M-step's shuffle of kept pairs (mixed with the epoch and batch); unset,
            ``seal`` takes ``seed_everything`` (0 outside the CLI).
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
        grad_clip: float = 1.0,
        chat_template: bool = True,
        generation: str = "hf",
        vllm: VLLMConfig = VLLMConfig(),
        outer: OuterConfig = OuterConfig(),
        sft_seed: int | None = None,
    ) -> None:
        super().__init__()
        task = task or KnowledgeTask()
        self.save_hyperparameters(
            {
                "model": model,
                "task": type(task).__name__,
                "dtype": dtype,
                "lora": lora and asdict(lora),
                "inner": asdict(inner),
                "sampling": asdict(sampling),
                "eval": asdict(eval),
                "lr": lr,
                "weight_decay": weight_decay,
                "grad_clip": grad_clip,
                "generation": generation,
                "outer": asdict(outer),
                "sft_seed": sft_seed or 0,
            }
        )
        self.spec, self.dtype_name, self.lora, self.outer = model, dtype, lora, outer
        backend = make_backend(generation, model, dtype, vllm, lora, inner)
        self.rollout = Rollout(task, sampling, inner, make_engine(inner), backend, chat_template)
        self.evaluator = Evaluator(eval, self.rollout)
        self.automatic_optimization = False  # the M-step may take several optimiser steps per batch
        self.strict_loading = False  # checkpoints hold only the trainable weights
        self.model: torch.nn.Module | None = None
        self.reference: torch.nn.Module | None = None  # a fully finetuned policy's frozen start (objective)
        self.tokenizer = None

    def configure_model(self) -> None:
        if self.model is not None:
            return
        model, self.tokenizer = load_model(self.spec, self.dtype_name)
        if self.lora is not None:
            model = get_peft_model(model, self.lora.peft_config())
        elif self.outer.needs_reference:
            self.reference = load_model(self.spec, self.dtype_name)[0].eval().requires_grad_(False)
        self.rollout.attach(model, self.tokenizer, shard_policy(self, model))  # FSDP: sharded here
        self.model = model.train()

    # --- M-step --------------------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> None:
        """The M-step on the batch's examples (gathered from all ranks, identical on each): SFT on
        kept pairs, the advantage-weighted loss or DPO's (``model.outer``), ``outer.sft_batch_size``
        examples an optimiser step, split across ranks (``outer.mstep.step_loss``)."""
        if "examples" not in batch:
            raise RuntimeError("no self-edits on the batch: add seal_lightning.SelfEditCallback to trainer.callbacks")
        if not (examples := batch["examples"]):
            return
        optimizer, hp, outer, losses = self.optimizers(), self.hparams, self.outer, []
        examples = with_old_logps(
            self.model, self.tokenizer, outer, examples, outer.sft_max_length, outer.sft_batch_size
        )
        seed = derive_seed("sft", self.current_epoch, batch_idx, *([hp.sft_seed] if hp.sft_seed else []))
        world, rank = self.trainer.world_size, self.trainer.global_rank
        for step in step_order(len(examples), outer.sft_epochs, outer.sft_batch_size, seed):
            parts = []
            for mine in micro_batches(len(step), world, rank, outer.micro_examples):
                parts.append(self._step_loss([examples[i] for i in step], mine))
                self.manual_backward(parts[-1])
            self.clip_gradients(optimizer, gradient_clip_val=hp.grad_clip, gradient_clip_algorithm="norm")
            optimizer.step()
            self.rollout.weights_version += 1
            optimizer.zero_grad(set_to_none=True)
            losses.append(torch.stack(parts).detach().sum())
        self.log(
            f"train/{self.outer.loss_name}",
            torch.stack(losses).mean(),
            prog_bar=True,
            batch_size=len(examples),
            sync_dist=True,
        )

    def _step_loss(self, step: list[Example], mine: list[int] | None = None) -> torch.Tensor:
        outer, world = self.outer, self.trainer.world_size
        return step_loss(self.model, self.tokenizer, outer, step, outer.sft_max_length, world, mine, self.reference)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        params = [p for p in self.parameters() if p.requires_grad]
        return torch.optim.AdamW(params, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)

    # --- evaluation ----------------------------------------------------------------------------
    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self.evaluator.step(batch["contexts"], in_fit=self.trainer.state.fn == TrainerFn.FITTING)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self.evaluator.step(batch["contexts"], in_fit=False)

    def predict_step(self, batch: dict, batch_idx: int) -> list[dict[str, str]]:
        """One self-edit per context from the current policy (``seal predict``; ``SelfEditWriter``
        writes them in the format of ``data.init_args.synthetic``)."""
        contexts = batch["contexts"]
        seed = derive_seed(self.evaluator.seed, [c["id"] for c in contexts])
        with self.rollout.whole_weights():
            _, edits = self.rollout.sample(contexts, 1, seed)
        return [{"context_id": c["id"], "text": row[0]} for c, row in zip(contexts, edits)]

    def on_validation_epoch_end(self) -> None:
        report_stage(self, self.evaluator, "val")

    def on_test_epoch_end(self) -> None:
        report_stage(self, self.evaluator, "test")

    # --- checkpoints ---------------------------------------------------------------------------
    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.rollout.weights_version += 1  # the weights about to be loaded are new to any published adapter

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        trainable = {name for name, p in self.named_parameters() if p.requires_grad}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}
