"""``seal plan``: memory per device and time per round of configs/paper_squad.yaml on constructed
device sizes (no GPU here), and the layouts it refuses, each naming the field to change."""

import json

import pytest
from conftest import CONFIGS

from seal_lightning.cli import main
from seal_lightning.cli.plan import PlanError, model_shape
from seal_lightning.cli.plan import main as plan_main
from seal_lightning.inner.memory import GiB

PAPER = ["--config", str(CONFIGS / "paper_squad.yaml")]
H100 = ["--plan.devices", "2", "--plan.device_gib", "79.6"]


def plan(*flags: str) -> dict:
    return plan_main([*PAPER, *flags])


def test_qwen_7b_on_two_h100s(capsys):
    shape = model_shape("Qwen/Qwen2.5-7B")  # the shipped shape: no hub
    assert shape.params == 7_615_616_512  # Qwen2.5-7B's published parameter count
    out = plan(*H100)
    rows, vllm = out["rows"], out["vllm"]
    assert rows["policy weights"] == 2 * shape.params and 15.1e9 < rows["policy weights"] < 15.3e9  # bf16
    per_layer = 2 * (3584 + 3584) + 2 * (3584 + 512) + 3 * (3584 + 18944)  # q, o; k, v; gate, up, down: in + out
    assert out["trained"] == 64 * 28 * per_layer  # the policy's LoRA r=64 on every linear layer
    assert rows["policy LoRA: fp32 weights, gradients, AdamW"] == 16 * out["trained"]
    assert rows["inner loop's frozen copy"] == 2 * shape.params  # model.inner.dtype bfloat16
    assert vllm["share"] == int(0.35 * 79.6 * GiB) and vllm["lora slots"] == 8 * 128 * 28 * per_layer * 2
    assert vllm["kv_per_token"] == 2 * 28 * 4 * 128 * 2  # 4 KV heads of 128 in 28 layers, bf16
    kv = vllm["share"] - vllm["weights"] - vllm["lora slots"] - vllm["activations (allowance)"]
    assert vllm["kv cache"] == kv and vllm["kv tokens"] == kv // vllm["kv_per_token"]
    assert out["total"] == sum(rows.values()) <= 79.6 * GiB
    assert out["round"]["per_rank"] == 25 and out["round"]["inner_runs"] == 25 * 5 * 3
    main(["plan", *PAPER, *H100])  # the `seal plan` command prints the same
    printed = capsys.readouterr().out
    assert printed.count("15.2 GB in bfloat16") == 2 and "fits" in printed and "no measured rate" in printed


def test_eight_devices_drop_what_does_not_divide_and_time_comes_from_a_benchmark(tmp_path, capsys):
    bench = tmp_path / "inner.json"
    rows = [{"engine": "sequential", "k": 8, "tokens": 1, "train_seconds": 1}]
    rows += [{"engine": "batched", "k": k, "tokens": 1000 * k, "train_seconds": 1.0} for k in (1, 8, 32)]
    bench.write_text(json.dumps({"rows": rows}))
    out = plan("--plan.devices", "8", "--plan.device_gib", "79.6", "--plan.benchmark", str(bench))
    r = out["round"]
    assert r["per_rank"] == 6 and r["trained"] == 48  # DistributedSampler drops 50 % 8
    assert r["rate"] == 8000  # K=8: the largest measured K within model.inner.max_adapters (16)
    assert r["seconds"] == pytest.approx(6 * 5 * 3 * 10 * 500 / 8000)
    assert "batched K=8" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("flags", "field"),
    [
        (["--model.vllm.gpu_memory_utilization", "0.9"], r"lower model.vllm.gpu_memory_utilization to at most 0\.\d\d"),
        (["--model.vllm.gpu_memory_utilization", "0.2"], r"raise model.vllm.gpu_memory_utilization to at least 0\.2"),
        (["--model.inner.memory_budget", "40"], r"lower model.inner.memory_budget to at most \d+\.\d"),
        (["--model.lora", "null", "--model.dtype", "float32"], r"trainer.strategy seal_lightning.distributed.FSDP2"),
        (["--plan.device_gib", "40"], r"do not fit 40.00 GiB: set model.generation hf"),
        (["--plan.device_gib", "40", "--model.dtype", "float32"], r"lower model.dtype to bfloat16"),
        (["--plan.device_gib", "30", "--model.generation", "hf"], r"needs devices of at least 3[12]\.\d\d GiB"),
    ],
)
def test_an_impossible_layout_is_refused_naming_the_field(flags, field):
    with pytest.raises(PlanError, match=field):
        plan(*H100, *flags)


def test_a_suggested_share_fits():
    with pytest.raises(PlanError, match=r"at most (0\.\d\d)") as refused:
        plan(*H100, "--model.vllm.gpu_memory_utilization", "0.9")
    share = refused.value.args[0].split("at most ")[1][:4]
    assert plan(*H100, "--model.vllm.gpu_memory_utilization", share)["total"] <= 79.6 * GiB


def test_devices_auto_needs_a_count_and_the_cpu_twin_plans_too(capsys):
    with pytest.raises(PlanError, match=r"trainer.devices is 'auto'; say how many with --plan.devices"):
        plan("--plan.device_gib", "80")
    twin = ["--model.model", "tiny-random-llama", "--trainer.accelerator", "cpu", "--model.generation", "hf"]
    out = plan(*twin, "--plan.devices", "2", "--plan.device_gib", "4")
    assert out["vllm"] is None and out["rows"]["policy weights"] == 2 * model_shape("tiny-random-llama").params
