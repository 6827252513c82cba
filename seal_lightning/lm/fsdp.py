"""FSDP2 for the policy: shard it over a data-parallel mesh, and gather its whole weights back.

:func:`shard` applies torch's ``fully_shard`` to each decoder block, then to the root module, over
the mesh it is given (never a default one, which can move the model to CUDA: pytorch issue 132471).
The M-step runs on the sharded model. The E-step needs whole weights (sampling and every inner
LoRA run train and generate on plain modules), so :func:`gather` all-gathers them into a plain
copy built from the meta-device template :func:`shard` returns.

The losses call the decoder directly (``lm.sft.batch_losses``: the output head is applied chunk by
chunk, never to all positions), which would bypass the root's FSDP hooks; :func:`shard` registers
that call as a forward method of the root (``sft.HIDDEN``), so the root's weights (embeddings,
final norm, a tied head) are gathered around it and its gradients reduced after backward.
"""

from __future__ import annotations

import copy
import types

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

from .sft import HIDDEN, decoder_hidden


def decoder_blocks(model: nn.Module) -> nn.ModuleList:
    """The decoder blocks of a transformers causal LM (peft-wrapped or not): ``get_decoder().layers``."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    blocks = getattr(decoder, "layers", None)
    if not isinstance(blocks, nn.ModuleList) or len(blocks) == 0:
        raise TypeError(
            f"FSDP cannot wrap {type(model).__name__}: it shards a transformers decoder-only model "
            "block by block and found no get_decoder().layers"
        )
    return blocks


def meta_copy(model: nn.Module) -> nn.Module:
    """``model``'s structure with every parameter on the meta device (tied parameters stay tied)
    and its buffers copied (rotary tables are non-persistent: no state dict holds them)."""
    memo = {id(p): nn.Parameter(torch.empty_like(p, device="meta"), p.requires_grad) for p in model.parameters()}
    return copy.deepcopy(model, memo)


def shard(model: nn.Module, mesh: DeviceMesh, mp_policy: MixedPrecisionPolicy | None = None) -> nn.Module:
    """Shard ``model`` in place over the 1-D data-parallel ``mesh``; return its meta-device template
    for :func:`gather`. ``mp_policy``: FSDP2's mixed precision (e.g. bf16 compute, fp32 reductions)."""
    if mesh.ndim != 1:
        raise ValueError(f"FSDP shards over a 1-D data-parallel mesh; got {mesh.ndim} dimensions {mesh.mesh_dim_names}")
    blocks = decoder_blocks(model)
    template = meta_copy(model)
    options = {"mesh": mesh, "mp_policy": mp_policy or MixedPrecisionPolicy()}
    for block in blocks:
        fully_shard(block, **options)
    # the root keeps its weights gathered from forward to backward: the head is applied after it
    fully_shard(model, reshard_after_forward=False, **options)
    setattr(model, HIDDEN, types.MethodType(decoder_hidden, model))
    register_fsdp_forward_method(model, HIDDEN)
    return template


def gather(model: nn.Module, template: nn.Module) -> nn.Module:
    """A plain copy of sharded ``model`` with whole weights, on every rank (a collective: all call it)."""
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
    names: dict[int, list[str]] = {}  # parameters shared by several names (a tied head): the state dict holds one
    for name, p in template.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(name)
    whole = copy.deepcopy(template)
    whole.load_state_dict(state, strict=False, assign=True)
    for group in names.values():
        loaded = next((p for p in map(whole.get_parameter, group) if not p.is_meta), None)
        if loaded is None:
            raise RuntimeError(f"FSDP gather: no weights for {group[0]} in the gathered state dict")
        for name in group:
            owner, _, leaf = name.rpartition(".")
            whole.get_submodule(owner)._parameters[leaf] = loaded
    device = next(iter(state.values())).device  # the template's buffers were copied before any move
    return whole.to(device).requires_grad_(False).eval()
