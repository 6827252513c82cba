"""vLLM under DDP: each rank's in-process engine on that rank's own device, and adapters checked
before the engine is asked to load them.

**One engine per rank**, not one engine on a GPU of its own serving every rank (the reference puts
its vLLM server on GPU 0 and the inner loop on GPU 1): a rank samples and answers for its own
contexts only, so N engines generate N times as fast with nothing sent between processes, adapters
stay in the rank's own RAM-backed store, and no HTTP server or port can fail to load one (the
reference's 404 on ``load_lora_adapter``, ignored). The cost is vLLM's own copy of the weights on
every GPU beside the policy and the inner loop's copy (``seal plan`` shows it per device).

``vllm.LLM`` starts its engine in a spawned process, which sees the environment at that moment: on a
GPU the rank's device is made the only visible one (``CUDA_VISIBLE_DEVICES`` = the physical id of
``torch.cuda.current_device()``), on a CPU the rank's share of the cores is its OpenMP binding
(``VLLM_CPU_OMP_THREADS_BIND``, unless set), and the DDP rendezvous variables are hidden so the engine
starts as a world of its own. The parent's environment is restored once the engine has started.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from .adapters import Adapter

# torch.distributed's rendezvous of the training processes: not the engine's business
DISTRIBUTED_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "NODE_RANK")
DISTRIBUTED_ENV += ("MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID")


@dataclass(frozen=True)
class Placement:
    """Where one rank's engine runs: ``env`` is what its processes see (None: unset)."""

    rank: int
    local_rank: int
    local_world: int
    where: str
    env: dict[str, str | None]


def _local() -> tuple[int, int, int]:
    """``(rank, local rank, processes on this node)``; ``(0, 0, 1)`` outside a process group."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return 0, 0, 1
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    return rank, int(os.environ.get("LOCAL_RANK", rank)), int(os.environ.get("LOCAL_WORLD_SIZE", world))


def placement() -> Placement:
    """This rank's device for its engine."""
    rank, local_rank, local_world = _local()
    env: dict[str, str | None] = dict.fromkeys(DISTRIBUTED_ENV)
    if torch.cuda.is_available():
        if local_world > 1 and os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING") == "0":
            raise RuntimeError(
                "model.generation: 'vllm' under DDP starts each rank's engine in a process of its own on the "
                "rank's GPU; VLLM_ENABLE_V1_MULTIPROCESSING=0 would put every engine on the first GPU: unset it"
            )
        index = torch.cuda.current_device()
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        physical = visible.split(",")[index].strip() if visible else str(index)
        env["CUDA_VISIBLE_DEVICES"] = physical
        return Placement(rank, local_rank, local_world, f"GPU {physical} (cuda:{index} of rank {rank})", env)
    bind = os.environ.get("VLLM_CPU_OMP_THREADS_BIND")
    if bind is None and local_world > 1:
        cores = sorted(os.sched_getaffinity(0))
        share = [c for i, c in enumerate(cores) if i * local_world // len(cores) == local_rank]
        share = share or [cores[local_rank % len(cores)]]  # fewer cores than ranks: they share
        bind = ",".join(map(str, share))
        env["VLLM_CPU_OMP_THREADS_BIND"] = bind
    return Placement(rank, local_rank, local_world, f"CPU cores {bind or 'auto'} (rank {rank})", env)


@contextmanager
def environment(env: dict[str, str | None]):
    """``os.environ`` with ``env`` applied (None removes), restored afterwards."""
    saved = {key: os.environ.get(key) for key in env}
    try:
        _apply(env)
        yield
    finally:
        _apply(saved)


def _apply(env: dict[str, str | None]) -> None:
    for key, value in env.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


class AdapterLoadError(RuntimeError):
    """An adapter the engine cannot load: the self-edits it serves are never silently answered by
    another model."""


def check_adapter(adapter: Adapter, max_rank: int) -> None:
    """Raise :class:`AdapterLoadError` naming ``adapter`` unless vLLM can load it: its directory,
    ``adapter_config.json`` and weights exist, and its ranks are within ``max_rank``."""
    path = Path(adapter.path)
    config, weights = path / "adapter_config.json", path / "adapter_model.safetensors"
    problem = None
    if not config.is_file():
        problem = f"no {config.name}"
    elif not weights.is_file() or weights.stat().st_size == 0:
        problem = f"no {weights.name} (or an empty one)"
    else:
        try:
            settings = json.loads(config.read_text())
        except (OSError, ValueError) as err:
            settings, problem = {}, f"{config.name} unreadable: {err}"
        ranks = [settings.get("r", 0), *(settings.get("rank_pattern") or {}).values()]
        if problem is None and max(ranks) > max_rank:
            problem = f"rank {max(ranks)} exceeds model.vllm.max_lora_rank={max_rank}"
    if problem:
        raise AdapterLoadError(f"vLLM cannot load LoRA adapter {adapter.name!r} (id {adapter.id}) at {path}: {problem}")


def generate_checked(llm, prompts: list[str], params, requests: list, adapters: list[Adapter | None]):
    """``llm.generate``; an engine failure while adapters are in the batch is raised naming them (vLLM's
    own error says only that its engine died; the cause is in its log above)."""
    try:
        return llm.generate(prompts, params, lora_request=requests, use_tqdm=False)
    except Exception as err:
        names = sorted({a.name for a in adapters if a is not None})
        if not names:
            raise
        raise AdapterLoadError(
            f"vLLM failed generating with LoRA adapters {names} ({type(err).__name__}: {err}); "
            "a failed adapter load is the usual cause: see the engine's log above"
        ) from err
