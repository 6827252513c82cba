"""vLLM under DDP without vLLM: each rank's engine placed on its own device, the parent's environment
restored, and adapters that cannot load refused naming them (tests/test_vllm_ddp.py runs the real thing)."""

import os
from pathlib import Path

import pytest
import torch

from seal_lightning.generation import vllm_rank
from seal_lightning.generation.adapters import Adapter, AdapterStore
from seal_lightning.generation.vllm_rank import AdapterLoadError, check_adapter, environment, generate_checked


def factors(r: int) -> dict:
    return {"model.layers.0.self_attn.q_proj": (torch.zeros(r, 8), torch.zeros(8, r), 2.0)}


def test_each_cpu_rank_binds_its_own_cores_and_hides_the_rendezvous(monkeypatch):
    monkeypatch.delenv("VLLM_CPU_OMP_THREADS_BIND", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda _: {0, 1, 2, 3})
    binds = []
    for rank in (0, 1):
        monkeypatch.setattr(vllm_rank, "_local", lambda rank=rank: (rank, rank, 2))
        place = vllm_rank.placement()
        binds.append(place.env["VLLM_CPU_OMP_THREADS_BIND"])
        assert place.env["MASTER_PORT"] is None and place.env["RANK"] is None  # unset for the engine
    assert binds == ["0,1", "2,3"]
    monkeypatch.setattr(vllm_rank, "_local", lambda: (2, 2, 3))
    monkeypatch.setattr(os, "sched_getaffinity", lambda _: {0, 1})
    assert vllm_rank.placement().env["VLLM_CPU_OMP_THREADS_BIND"] == "0"  # fewer cores than ranks: shared
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "1")  # the user's binding wins
    assert "VLLM_CPU_OMP_THREADS_BIND" not in vllm_rank.placement().env


def test_each_gpu_rank_shows_its_engine_only_its_own_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    monkeypatch.setattr(vllm_rank, "_local", lambda: (1, 1, 2))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")
    place = vllm_rank.placement()
    assert place.env["CUDA_VISIBLE_DEVICES"] == "5" and "GPU 5" in place.where
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    with pytest.raises(RuntimeError, match="VLLM_ENABLE_V1_MULTIPROCESSING=0 would put every engine on the first"):
        vllm_rank.placement()


def test_the_parents_environment_comes_back(monkeypatch):
    monkeypatch.setenv("MASTER_PORT", "29500")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with environment({"MASTER_PORT": None, "CUDA_VISIBLE_DEVICES": "3"}):
        assert "MASTER_PORT" not in os.environ and os.environ["CUDA_VISIBLE_DEVICES"] == "3"
    assert os.environ["MASTER_PORT"] == "29500" and "CUDA_VISIBLE_DEVICES" not in os.environ


def test_an_adapter_that_cannot_load_is_an_error_naming_it(tmp_path):
    store = AdapterStore(tmp_path)
    good = store.put(factors(8), "inner")
    check_adapter(good, max_rank=16)
    with pytest.raises(AdapterLoadError, match=r"'inner-1' .*rank 8 exceeds model.vllm.max_lora_rank=4"):
        check_adapter(good, max_rank=4)
    with pytest.raises(AdapterLoadError, match=r"'gone' \(id 7\) .*no adapter_config.json"):
        check_adapter(Adapter("gone", 7, tmp_path / "nowhere"), max_rank=16)
    (good.path / "adapter_model.safetensors").write_bytes(b"")
    with pytest.raises(AdapterLoadError, match=r"'inner-1' .*no adapter_model.safetensors \(or an empty one\)"):
        check_adapter(good, max_rank=16)


def test_an_engine_failure_with_adapters_names_them():
    class DeadEngine:
        def generate(self, *args, **kwargs):
            raise RuntimeError("EngineCore encountered an issue. See stack trace (above) for the root cause.")

    adapter = Adapter("inner-3", 3, Path("/dev/null"))
    with pytest.raises(AdapterLoadError, match=r"adapters \['inner-3'\] \(RuntimeError: EngineCore encountered"):
        generate_checked(DeadEngine(), ["q"], None, [None], [adapter])
    with pytest.raises(RuntimeError, match="^EngineCore encountered"):  # no adapter in the batch: vLLM's own error
        generate_checked(DeadEngine(), ["q"], None, [None], [None])
