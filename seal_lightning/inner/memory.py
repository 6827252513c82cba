"""A memory budget for the batched inner engine, planned before it runs.

On a CPU the kernel's out-of-memory killer ends the process without an exception, so a retry on
error never runs. The engine therefore plans: it measures once per model what autograd saves per
trained token (a probe forward through the injected adapters, counted with
``saved_tensors_hooks``), adds the adapters' fixed cost (weights, gradients, two Adam moments) and
the loss's logits chunk, and from these picks how many adapters train together (``width``) and
how many tokens go into each forward/backward (gradients accumulate across them, so results do
not change). Answers are generated in chunks of rows whose KV cache and prefill fit the budget.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

from ..lm.loss import LOSS_CHUNK
from ..lm.sft import first_fit

GiB = 2**30
AUTO_SHARE = 0.4  # default budget: this share of the memory available when the run plans
PROBE_TOKENS = 128
# Backward holds a layer's activation gradients while it frees the layer's saved tensors: live
# memory per token peaked at 1.25-1.3x the saved bytes (SmolLM2-135M, 128-2048 tokens).
TRANSIENT = 1.3
# glibc's allocator keeps freed blocks for reuse rather than returning them: resident memory grew
# by up to 1.4x the live bytes planned (same runs), so the plan keeps live bytes to budget / 1.4.
FRAGMENTATION = 1.4


def available_memory(device: torch.device) -> int:
    """Bytes free on ``device``: free GPU memory, or the kernel's MemAvailable on the CPU."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def budget_bytes(budget_gib: float | None, device: torch.device) -> int:
    """``inner.memory_budget`` in bytes; ``None``: :data:`AUTO_SHARE` of the available memory."""
    if budget_gib is None:
        return int(AUTO_SHARE * available_memory(device))
    if budget_gib <= 0:
        raise ValueError(f"inner.memory_budget must be positive (GiB), got {budget_gib}")
    return int(budget_gib * GiB)


def saved_bytes(run, exclude: set[int]) -> int:
    """Bytes of the tensors autograd saves while ``run()`` builds its graph, each storage once and
    none of ``exclude`` (the storages of parameters). The graph is not kept: nothing can be
    backpropagated through it."""
    seen: dict[int, int] = {}
    held: list[torch.Tensor] = []  # alive until counted, so no address is reused

    def pack(tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in exclude:
            seen.setdefault(storage.data_ptr(), storage.nbytes())
            held.append(tensor)

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda _: None):
        run()
    return sum(seen.values())


@dataclass(frozen=True)
class MemoryPlan:
    """What one batched inner run may hold, in bytes.

    ``per_token``: saved activations per trained token outside the adapters' routing grid;
    ``per_slot``: per slot of that grid (adapters in a forward x the most tokens any of them has);
    ``per_adapter``: an adapter's weights, gradients and Adam moments; ``reserve``: the loss's logits
    chunk; ``per_cached_token``: KV cache and prefill per token of a generated row.
    """

    budget: int
    per_token: float
    per_slot: float
    per_adapter: int
    reserve: int
    per_cached_token: float

    @property
    def live(self) -> float:
        """Bytes the plan may hold live, leaving room for the allocator's overhead."""
        return self.budget / FRAGMENTATION

    def activation_bytes(self, tokens: int, slots: int) -> float:
        return self.per_token * tokens + self.per_slot * slots

    def width(self, max_adapters: int, longest: int) -> int:
        """Adapters to train together: at most ``max_adapters``, leaving room for a forward of one
        adapter's ``longest`` tokens; raises if not even one adapter fits."""
        room = self.live - self.reserve - self.activation_bytes(longest, longest)
        width = min(max_adapters, int(room // self.per_adapter)) if room > 0 else 0
        if width < 1:
            need = FRAGMENTATION * (self.reserve + self.activation_bytes(longest, longest) + self.per_adapter) / GiB
            raise MemoryError(
                f"inner.memory_budget {self.budget / GiB:.2f} GiB holds no adapter: one adapter and one forward of "
                f"{longest} tokens need {need:.2f} GiB; raise inner.memory_budget, lower inner.max_length or "
                f"inner.batch_size or inner.r, or set inner.checkpointing: true"
            )
        return width

    def activation_room(self, width: int) -> float:
        """Bytes for one forward/backward's activations when ``width`` adapters are resident."""
        return self.live - self.reserve - width * self.per_adapter

    def answer_rows(self, tokens_per_row: int, resident: int, limit: int) -> int:
        """Rows per generation chunk (at most ``limit``) whose cache fits beside ``resident`` bytes."""
        room = self.live - resident - self.reserve
        return max(1, min(limit, int(room // max(1.0, tokens_per_row * self.per_cached_token))))


def adapter_bytes(layers: dict[str, nn.Module]) -> int:
    """Per adapter: weights, gradients and two Adam moments of every stacked ``A`` and ``B``."""
    return sum(
        4 * (layer.A[0].numel() * layer.A.element_size() + layer.B[0].numel() * layer.B.element_size())
        for layer in layers.values()
    )


def slot_bytes(layers: dict[str, nn.Module]) -> int:
    """Per grid slot: the scattered input and the rank-r product each layer saves for backward."""
    return sum((layer.A.shape[2] + layer.A.shape[1]) * layer.A.element_size() for layer in layers.values())


def _text_config(model: nn.Module):
    """The language model's config (a multimodal config nests it)."""
    return model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config


def cached_token_bytes(model: nn.Module, element_size: int) -> float:
    """Per token of a generated row: its keys and values in every layer, plus one layer's prefill
    activations (hidden and MLP widths, a few of each)."""
    config = _text_config(model)
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    kv = 2 * config.num_hidden_layers * kv_heads * head_dim
    prefill = 8 * config.hidden_size + 4 * getattr(config, "intermediate_size", 4 * config.hidden_size)
    return float((kv + prefill) * element_size)


def logits_bytes(model: nn.Module) -> int:
    """The loss's live logits: a chunk of fp32 logits and its softmax, with a third for temporaries."""
    return 3 * LOSS_CHUNK * model.get_output_embeddings().weight.shape[0] * 4


def plan(budget: int, model: nn.Module, layers: dict[str, nn.Module], probe, checkpointing: bool) -> MemoryPlan:
    """Measure ``probe(tokens)`` (a forward of one adapter over ``tokens`` tokens) and build the plan.

    ``checkpointing``: turn on activation checkpointing after a first probe; each layer's saved
    tensors are then dropped, but its input is kept and one layer at a time is recomputed, so a
    token costs what the second probe counts plus the layers' inputs and one layer of the first.
    """
    exclude = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    per_slot = slot_bytes(layers)
    per_token = saved_bytes(lambda: probe(PROBE_TOKENS), exclude) / PROBE_TOKENS - per_slot
    element = next(iter(layers.values())).base.weight.element_size()
    if checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        config = _text_config(model)
        n = config.num_hidden_layers
        kept = saved_bytes(lambda: probe(PROBE_TOKENS), exclude) / PROBE_TOKENS
        per_token = kept + n * config.hidden_size * element + (per_token + per_slot) / n
        per_slot = per_slot / n
    return MemoryPlan(
        budget,
        TRANSIENT * max(per_token, 0.0),
        TRANSIENT * per_slot,
        adapter_bytes(layers),
        logits_bytes(model),
        cached_token_bytes(model, element),
    )


def packed_cost(plan: MemoryPlan, group: dict[int, list[int]], pack_length: int) -> float:
    """Bytes of one forward/backward over ``group`` (adapter -> its row lengths), packed as
    :func:`~seal_lightning.lm.sft.pack` packs it: padding counts, and belongs to its bin's last row."""
    owners = [k for k, rows in group.items() for _ in rows]
    lengths = [n for rows in group.values() for n in rows]
    bins = first_fit(lengths, pack_length)
    width = max(sum(lengths[i] for i in b) for b in bins)
    per_owner = dict.fromkeys(group, 0)
    for b in bins:
        for i in b:
            per_owner[owners[i]] += lengths[i]
        per_owner[owners[b[-1]]] += width - sum(lengths[i] for i in b)
    return plan.activation_bytes(len(bins) * width, len(per_owner) * max(per_owner.values()))


def split_tokens(
    lengths: dict[int, list[int]], plan: MemoryPlan, room: float, pack_length: int
) -> list[dict[int, list[int]]]:
    """Split a step's rows (adapter -> its row lengths) into forward/backward groups (adapter -> row
    indices) that each fit ``room`` bytes; a row that fits nowhere goes alone."""
    groups: list[dict[int, list[int]]] = []
    current: dict[int, list[int]] = {}
    for k, rows in lengths.items():
        for i in range(len(rows)):
            trial = {**current, k: current.get(k, []) + [i]}
            sizes = {a: [lengths[a][j] for j in index] for a, index in trial.items()}
            if current and packed_cost(plan, sizes, pack_length) > room:
                groups.append(current)
                trial = {k: [i]}
            current = trial
    if current:
        groups.append(current)
    return groups
