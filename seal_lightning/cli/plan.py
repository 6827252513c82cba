"""``seal plan --config FILE.yaml [fit flags] --plan.devices N --plan.device_gib G``: what each device
will hold and how long a round takes, before the run starts; a layout that does not fit stops naming
the field to change.

Per device (every DDP rank holds the same; FSDP2 divides the policy's state by the ranks): the policy
weights in ``model.dtype``, its trained weights' gradients and AdamW moments (LoRA adapters train in
fp32), the inner loop's frozen copy in ``model.inner.dtype``, the batched inner loop's budget
(``model.inner.memory_budget``, or the engine's default share of what is left), vLLM's share of the
GPU (``model.vllm.gpu_memory_utilization``: its weights, its LoRA slots, an allowance for its
activations, and the KV cache in what remains), and an allowance for the CUDA context. Sizes come
from the model's config on the meta device (no weights are read); ``Qwen/Qwen2.5-7B``'s shape is
shipped, so the paper's setting is planned without the hub. The time per round is the inner
loop's trained tokens at a measured rate (``benchmarks/inner_loop.py --out``); sampling and
answers are not in it.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from ..inner.memory import AUTO_SHARE, GiB
from ..lm.models import TINY, load_model, resolve
from .fit import SealCLI

ASSETS = Path(__file__).resolve().parents[1] / "assets"
SHAPES = {"Qwen/Qwen2.5-7B": ASSETS / "qwen2.5-7b-config.json"}  # planned without the hub
CONTEXT_GIB = 1.0  # the training process's CUDA context and cuBLAS workspace (allowance)
VLLM_ACTIVATIONS_GIB = 2.0  # vLLM's profiled activations, sampler and CUDA graphs (allowance)


@dataclass(frozen=True)
class PlanSettings:
    """What ``seal plan`` cannot read from the config.

    Args:
        devices: devices (DDP or FSDP ranks) in all; null: ``trainer.devices`` x ``trainer.num_nodes``.
        device_gib: memory of one device in GiB; null: the first GPU's here.
        benchmark: a ``benchmarks/inner_loop.py --out`` JSON; its measured batched rate times the round.
        tokens_per_second: trained inner tokens per second per device, when not from ``benchmark``.
        self_edit_tokens: tokens in one self-edit (assumed; the ledger of a run measures it).
    """

    devices: int | None = None
    device_gib: float | None = None
    benchmark: str | None = None
    tokens_per_second: float | None = None
    self_edit_tokens: int = 500


@dataclass(frozen=True)
class Shape:
    """Parameter counts of a model, from its config on the meta device."""

    name: str
    params: int
    linear_in_out: int  # sum of in + out features over the linear layers but the head
    kv_per_token: int  # keys and values of one token in every layer, elements
    config: object

    def lora(self, r: int) -> int:
        return r * self.linear_in_out


def model_shape(spec: str) -> Shape:
    """The shape of ``spec``: a shipped config, the tiny model, or the config ``resolve`` finds."""
    if spec in SHAPES:
        config = AutoConfig.from_pretrained(SHAPES[spec])
    elif spec == TINY:
        config = load_model(TINY)[0].config
    else:
        config = AutoConfig.from_pretrained(resolve(spec))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    head = model.get_output_embeddings()
    linear = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not head]
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    kv = 2 * config.num_hidden_layers * (getattr(config, "num_key_value_heads", None) or heads) * head_dim
    params = sum(p.numel() for p in model.parameters())
    return Shape(spec, params, sum(m.in_features + m.out_features for m in linear), kv, config)


def nbytes(dtype: str | None) -> int:
    return torch.finfo(getattr(torch, dtype)).bits // 8


class PlanError(SystemExit):
    """A layout that does not fit: the message names the field to change."""


def plan(config, settings: PlanSettings, shape: Shape) -> dict:
    """Every figure of the plan, in bytes per device, and the round's work per rank; raises
    :class:`PlanError` naming the field to change when it does not fit."""
    model, trainer = config.model, config.trainer
    devices = settings.devices or _devices(trainer)
    if settings.device_gib is None and not torch.cuda.is_available():
        raise PlanError("seal plan: no GPU here; give the size of one with --plan.device_gib")
    device = int(settings.device_gib * GiB) if settings.device_gib else torch.cuda.get_device_properties(0).total_memory
    strategy = trainer.strategy if isinstance(trainer.strategy, str) else trainer.strategy.class_path
    sharded = devices if "FSDP" in strategy else 1
    dtype, inner_dtype = nbytes(model.dtype), nbytes(_inner_dtype(model))
    rows = {"policy weights": shape.params * dtype // sharded}
    if model.lora is not None:
        trained = shape.lora(model.lora.r)
        rows["policy LoRA: fp32 weights, gradients, AdamW"] = 16 * trained // sharded
    else:
        trained = shape.params
        rows["policy gradients and AdamW"] = 3 * trained * dtype // sharded
        if sharded > 1:
            rows["E-step: gathered whole weights"] = shape.params * dtype
    rows["inner loop's frozen copy"] = shape.params * inner_dtype
    rows["CUDA context (allowance)"] = int(CONTEXT_GIB * GiB)
    vllm = _vllm(model, shape, device) if model.generation == "vllm" else None
    if vllm is not None:
        rows["vLLM share"] = vllm["share"]
    left = device - sum(rows.values())
    budget = model.inner.memory_budget
    rows["inner loop budget"] = int(budget * GiB) if budget else int(AUTO_SHARE * max(left, 0))
    out = {"devices": devices, "device": device, "rows": rows, "vllm": vllm, "total": sum(rows.values())}
    out |= {"trained": trained, "shape": shape, "round": _round(config, settings, shape, devices)}
    _check(out, model, left)
    return out


def _devices(trainer) -> int:
    devices, nodes = trainer.devices, trainer.get("num_nodes") or 1
    if isinstance(devices, int):
        return devices * nodes
    if isinstance(devices, (list, tuple)):
        return len(devices) * nodes
    if str(devices).isdigit():
        return int(devices) * nodes
    raise PlanError(f"seal plan: trainer.devices is {devices!r}; say how many with --plan.devices")


def _inner_dtype(model) -> str:
    return model.inner.dtype if model.inner.dtype != "auto" else "bfloat16"  # auto: bf16 on a GPU


def _vllm(model, shape: Shape, device: int) -> dict:
    """vLLM's share of the GPU and what fills it; the KV cache is what is left of the share."""
    v = model.vllm
    element = nbytes(v.dtype or model.dtype)
    weights = shape.params * element
    loras = v.max_loras * v.max_lora_rank * shape.linear_in_out * element  # preallocated A and B of every slot
    activations = int(VLLM_ACTIVATIONS_GIB * GiB)
    if v.kv_cache_gib is not None:
        kv = int(v.kv_cache_gib * GiB)
        share = weights + loras + activations + kv
    else:
        share = int(v.gpu_memory_utilization * device)
        kv = share - weights - loras - activations
    length = v.max_model_len or shape.config.max_position_embeddings
    per_token = shape.kv_per_token * element
    return {
        "share": share,
        "weights": weights,
        "lora slots": loras,
        "activations (allowance)": activations,
        "kv cache": kv,
        "kv tokens": max(kv, 0) // per_token,
        "max_model_len": length,
        "kv_per_token": per_token,
    }


def _round(config, settings: PlanSettings, shape: Shape, devices: int) -> dict:
    """One round's inner work per rank and, from a measured rate, its time."""
    model, data = config.model, config.data.init_args
    contexts = data.get("train_size") or 0
    per_rank = contexts // devices  # DistributedSampler drops len % world_size
    runs = per_rank * model.outer.k * model.inner.repeats
    tokens = runs * model.inner.epochs * settings.self_edit_tokens
    rate, source = settings.tokens_per_second, "--plan.tokens_per_second"
    if settings.benchmark:
        rate, source = _measured_rate(settings.benchmark, model.inner.max_adapters)
    flops = (4 * shape.params + 6 * shape.lora(model.inner.r)) * tokens
    return {"contexts": contexts, "trained": per_rank * devices, "per_rank": per_rank, "inner_runs": runs} | {
        "tokens": tokens,
        "flops": flops,
        "rate": rate,
        "source": source,
        "seconds": tokens / rate if rate else None,
    }


def _measured_rate(path: str, max_adapters: int) -> tuple[float, str]:
    """The batched engine's trained tokens/s at the largest measured K up to ``max_adapters``."""
    rows = [r for r in json.loads(Path(path).read_text())["rows"] if r["engine"] == "batched"]
    usable = [r for r in rows if r["k"] <= max_adapters] or rows
    best = max(usable, key=lambda r: r["k"])
    return best["tokens"] / best["train_seconds"], f"{path}, batched K={best['k']}"


def _check(out: dict, model, left: int) -> None:
    """Stop, naming the field to change, when the layout cannot hold."""
    device, vllm, rows, gib = out["device"], out["vllm"], out["rows"], lambda b: f"{b / GiB:.2f} GiB"
    torch_side = sum(b for name, b in rows.items() if name not in ("vLLM share", "inner loop budget"))
    need = 0
    if vllm is not None:  # the least share vLLM starts with: weights, LoRA slots, activations, one sequence
        need = vllm["weights"] + vllm["lora slots"] + vllm["activations (allowance)"]
        need += vllm["kv_per_token"] * vllm["max_model_len"]
        if vllm["kv cache"] < vllm["kv_per_token"] * vllm["max_model_len"] and torch_side + need < device:
            field = (
                "model.vllm.kv_cache_gib"
                if model.vllm.kv_cache_gib is not None
                else "model.vllm.gpu_memory_utilization"
            )
            raise PlanError(
                f"seal plan: vLLM's share ({gib(vllm['share'])}) holds its weights ({gib(vllm['weights'])}) and LoRA "
                f"slots ({gib(vllm['lora slots'])}) but not one sequence of {vllm['max_model_len']} tokens: raise "
                f"{field} to at least {math.ceil(100 * need / device) / 100:.2f} of the device, or lower "
                "model.vllm.max_loras, model.vllm.max_lora_rank or model.vllm.max_model_len"
            )
    if out["total"] <= device and left > 0:
        return
    if model.inner.memory_budget and rows["inner loop budget"] > max(left, 0):
        field = f"lower model.inner.memory_budget to at most {max(left, 0) / GiB:.1f}"
    elif vllm is not None and model.vllm.kv_cache_gib is None and torch_side + need < device:
        top = (vllm["share"] - max(out["total"] - device, 0) - 0.01 * device) / device
        field = f"lower model.vllm.gpu_memory_utilization to at most {math.floor(100 * top) / 100:.2f}"
    elif model.lora is None and "E-step: gathered whole weights" not in rows:
        field = "shard the policy: trainer.strategy seal_lightning.distributed.FSDP2Strategy"
    elif vllm is not None and torch_side + need - vllm["lora slots"] < device < torch_side + need:
        field = f"lower model.vllm.max_loras ({model.vllm.max_loras} slots take {gib(vllm['lora slots'])})"
    elif vllm is not None and torch_side < device:
        field = "set model.generation hf (vLLM's own copy of the weights does not fit beside the policy's two)"
    elif "float32" in (model.dtype, _inner_dtype(model)):
        field = "lower model.dtype to bfloat16" if model.dtype == "float32" else "lower model.inner.dtype to bfloat16"
    else:
        field = f"needs devices of at least {gib(torch_side + need)} (--plan.device_gib) before the inner loop's budget"
    raise PlanError(
        f"seal plan: {gib(out['total'])} per device do not fit {gib(device)}: {field} "
        f"(largest: {max(rows, key=rows.get)}, {gib(max(rows.values()))})"
    )


class _ParseOnly(SealCLI):
    """The fit command's parser and config, nothing instantiated."""

    def add_arguments_to_parser(self, parser) -> None:
        super().add_arguments_to_parser(parser)
        parser.add_class_arguments(PlanSettings, "plan")

    def before_instantiate_classes(self) -> None:
        pass

    def instantiate_classes(self) -> None:
        pass


def main(argv: list[str]) -> dict:
    with warnings.catch_warnings():  # LightningCLI warns when args differ from sys.argv: ours drop "plan"
        warnings.filterwarnings("ignore", message=".*args parameter is intended")
        config = _ParseOnly(args=argv, run=False).config
    planned = plan(config, PlanSettings(**vars(config.plan)), model_shape(config.model.model))
    print(render(planned, config))
    return planned


def render(p: dict, config) -> str:
    shape, model, r = p["shape"], config.model, p["round"]
    gib = lambda b: f"{b / GiB:8.2f}"  # noqa: E731
    lines = [
        f"plan (planned, not measured): {p['devices']} device(s) of {p['device'] / GiB:.1f} GiB; "
        f"{shape.name}: {shape.params / 1e9:.3f}B parameters ({shape.params * nbytes(model.dtype) / 1e9:.1f} GB "
        f"in {model.dtype}), {p['trained'] / 1e6:.1f}M trained",
        "per device                                          GiB",
    ]
    for name, b in p["rows"].items():
        lines.append(f"  {name:<48}{gib(b)}")
        if name == "vLLM share":
            v = p["vllm"]
            lines += [
                f"    {k:<46}{gib(v[k])}" for k in ("weights", "lora slots", "activations (allowance)", "kv cache")
            ]
            tokens, length = v["kv tokens"], v["max_model_len"]
            lines.append(f"      = {tokens} tokens: {tokens // length} sequences of model.vllm.max_model_len {length}")
    lines.append(f"  {'total':<48}{gib(p['total'])}  of {p['device'] / GiB:.2f}: fits")
    lines.append(
        f"round: {r['trained']} of {r['contexts']} passages ({r['per_rank']} per rank) x K={model.outer.k} x "
        f"{model.inner.repeats} repeats = {r['inner_runs']} inner runs per rank, {model.inner.epochs} epochs of "
        f"{r['tokens'] // max(r['inner_runs'] * model.inner.epochs, 1)} tokens (assumed) = "
        f"{r['tokens'] / 1e6:.2f}M trained tokens, {r['flops'] / 1e15:.0f} PFLOP per rank"
    )
    if r["seconds"] is None:
        lines.append("time per round: no measured rate; pass --plan.benchmark (benchmarks/inner_loop.py --out)")
    else:
        rate = f"{r['rate']:.0f} trained tokens/s per device ({r['source']})"
        lines.append(f"time per round (inner training only): {r['seconds'] / 3600:.2f} h at {rate}")
    return "\n".join(lines)
