"""FSDP2Strategy: Lightning's ModelParallelStrategy as pure FSDP2 data parallelism, CPU (gloo) or GPU.

Lightning's ``FSDPStrategy`` refuses a CPU accelerator; its ``ModelParallelStrategy`` (FSDP2 and
DTensor) does not, and leaves the sharding to ``configure_model`` (``SEALPolicy`` applies
``lm.fsdp.shard`` there). This subclass fixes the mesh to data parallelism only
(``tensor_parallel_size`` 1, every process a data-parallel rank), carries FSDP2's mixed precision
choice, and loads the sharded checkpoints ``SEALPolicy`` writes, which hold only the trainable
weights (the frozen base is rebuilt from the model spec), plus the optimiser state::

    trainer:
      strategy:
        class_path: seal_lightning.distributed.FSDP2Strategy
        init_args: {param_dtype: bfloat16, reduce_dtype: float32}   # GPU; null on CPU
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed.checkpoint as dcp
from lightning.pytorch import LightningModule
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import MixedPrecisionPolicy

from .lm.fsdp import shard

METADATA = "meta.pt"  # what Lightning writes beside the shards: loops, callbacks, hyperparameters


class FSDP2Strategy(ModelParallelStrategy):
    """FSDP2 over all processes.

    Args:
        data_parallel_size: ``auto`` (every process) or the world size.
        tensor_parallel_size: must be 1 (the policy is sharded, never split by tensor parallelism).
        param_dtype: dtype the sharded weights are gathered and computed in (``bfloat16`` on a GPU);
            null keeps the weights' own.
        reduce_dtype: dtype of the gradient reduce-scatter; null: ``param_dtype``'s.
        save_distributed_checkpoint: each rank writes its shard (a checkpoint directory); False
            gathers a single file on rank 0.
    """

    def __init__(
        self,
        data_parallel_size: Literal["auto"] | int = "auto",
        tensor_parallel_size: int = 1,
        param_dtype: str | None = None,
        reduce_dtype: str | None = None,
        save_distributed_checkpoint: bool = True,
        **kwargs: Any,
    ) -> None:
        if tensor_parallel_size != 1:
            raise ValueError(
                f"FSDP2Strategy: tensor_parallel_size={tensor_parallel_size}; seal shards the policy "
                "with FSDP2 data parallelism only: set tensor_parallel_size: 1"
            )
        super().__init__(data_parallel_size, tensor_parallel_size, save_distributed_checkpoint, **kwargs)
        dtypes = {name: getattr(torch, name, None) for name in (param_dtype, reduce_dtype) if name}
        if bad := [name for name, dtype in dtypes.items() if not isinstance(dtype, torch.dtype)]:
            raise ValueError(f"trainer.strategy: {bad[0]!r} is not a torch dtype (e.g. bfloat16, float32)")
        self.mp_policy = MixedPrecisionPolicy(dtypes.get(param_dtype), dtypes.get(reduce_dtype))

    def setup_environment(self) -> None:
        world, dp = self.num_processes * self.num_nodes, self._data_parallel_size
        if dp not in ("auto", world):
            raise ValueError(
                f"FSDP2Strategy: data_parallel_size={dp} does not match the {world} processes "
                "(trainer.devices x trainer.num_nodes): use auto or the same number"
            )
        self._data_parallel_size = world
        super().setup_environment()

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: str | Path, storage_options: Any = None) -> None:
        """Shards and metadata into ``<path>.partial``, moved over ``filepath`` once every rank has
        written: a run killed while saving keeps its previous checkpoint whole."""
        path = Path(self.broadcast(str(filepath)))
        if not self._save_distributed_checkpoint:
            return super().save_checkpoint(checkpoint, path, storage_options)
        partial, old = path.with_name(path.name + ".partial"), path.with_name(path.name + ".old")
        if self.global_rank == 0:
            for stale in (partial, old):
                shutil.rmtree(stale, ignore_errors=True)
        self.barrier()
        super().save_checkpoint(checkpoint, partial, storage_options)
        self.barrier()
        if self.global_rank == 0:
            if path.is_dir():
                path.rename(old)
            elif path.exists():
                path.unlink()
            partial.rename(path)
            shutil.rmtree(old, ignore_errors=True)
        self.barrier()

    @property
    def data_parallel_mesh(self):
        """The 1-D mesh the policy is sharded over."""
        return self.device_mesh["data_parallel"]

    def load_checkpoint(self, checkpoint_path: str | Path, weights_only: bool | None = None) -> dict[str, Any]:
        """Load a sharded checkpoint's trainable weights and optimiser state into the sharded module;
        return the rest (Lightning's metadata). A single-file checkpoint loads as Lightning does."""
        path = Path(self.broadcast(checkpoint_path))
        if not path.is_dir():
            return super().load_checkpoint(path, weights_only)
        module = self.lightning_module
        trainable = {name for name, p in module.named_parameters() if p.requires_grad}
        state = {"state_dict": {k: v for k, v in get_model_state_dict(module).items() if k in trainable}}
        dcp.load(state, checkpoint_id=path)
        set_model_state_dict(module, state["state_dict"], options=StateDictOptions(strict=False))
        for i, optimizer in enumerate(self.optimizers):
            key = f"optimizer_{i}"
            optim = {key: get_optimizer_state_dict(module, optimizer)}
            dcp.load(optim, checkpoint_id=path)
            set_optimizer_state_dict(module, optimizer, optim_state_dict=optim[key])
        return torch.load(path / METADATA, weights_only=weights_only)


def shard_policy(module: LightningModule, model: nn.Module) -> nn.Module | None:
    """Shard ``model`` (``module``'s policy) when ``module`` runs under a model-parallel strategy;
    return its template for ``Rollout.attach`` (None when not sharded)."""
    if module.device_mesh is None:
        return None
    strategy = module.trainer.strategy
    if not isinstance(strategy, FSDP2Strategy):
        raise TypeError(
            f"trainer.strategy {type(strategy).__name__}: shard the policy with "
            "seal_lightning.distributed.FSDP2Strategy (a ModelParallelStrategy for FSDP2 data "
            "parallelism whose checkpoints hold the trainable weights only)"
        )
    return shard(model, strategy.data_parallel_mesh, strategy.mp_policy)


def read_shards(path: str | Path, module: nn.Module) -> dict[str, torch.Tensor]:
    """The trainable weights of ``module`` from a sharded checkpoint directory, read whole in this
    process (no process group): what ``seal export`` loads onto a rebuilt policy."""
    state = {"state_dict": {n: torch.empty_like(p) for n, p in module.named_parameters() if p.requires_grad}}
    try:
        dcp.load(state, checkpoint_id=Path(path), no_dist=True)
    except CheckpointException as err:  # wraps each rank's error (a size or key mismatch)
        raise ValueError(f"sharded checkpoint {str(path)!r} does not fit the rebuilt policy: {err}") from None
    return state["state_dict"]
