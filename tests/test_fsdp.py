"""FSDP2 on 2 CPU processes (gloo): one M-step sharded against one process, `seal fit --config
configs/fsdp_tiny.yaml` (ledger, sharded checkpoints, weights), SIGKILL and resume, `seal export`
of a sharded checkpoint, and bad setups failing at the start."""

import json
import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import CONFIGS
from lightning.pytorch.strategies import ModelParallelStrategy
from peft import get_peft_model
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor

from seal_lightning import SEALPolicy
from seal_lightning.cli.export import main as export_main
from seal_lightning.cli.export import rebuild_policy
from seal_lightning.distributed import FSDP2Strategy, read_shards, shard_policy
from seal_lightning.lm import TINY, PolicyLoRA, load_model
from seal_lightning.lm.fsdp import decoder_blocks, shard
from seal_lightning.outer.mstep import micro_batches, step_loss, with_old_logps
from seal_lightning.outer.objective import AdvantageExample, OuterConfig, PreferenceExample, SFTExample

TESTS = os.path.dirname(__file__)
PROMPT = "Write facts about the Belvor River."
EXAMPLES = {  # 3 examples: rank 0 gets 2, rank 1 gets 1
    "rest_em": [
        SFTExample(PROMPT, "It rises in the Urmav Mountains."),
        SFTExample(PROMPT, "Its tributary is the Roscassul."),
        SFTExample(PROMPT, "Barges carry wine barrels."),
    ],
    "advantage": [
        AdvantageExample(PROMPT, "It rises in the Urmav Mountains.", 1.2),
        AdvantageExample(PROMPT, "It is green.", -0.7),
        AdvantageExample(PROMPT, "Falol is the largest town on it.", 0.4),
    ],
    "dpo": [
        PreferenceExample(PROMPT, "It rises in the Urmav Mountains.", "It is green."),
        PreferenceExample(PROMPT, "Falol lies on its banks.", "It is a river."),
        PreferenceExample(PROMPT, "Galfen Bridge.", "Bridge."),
    ],
}


CASES = [(algorithm, "lora") for algorithm in EXAMPLES] + [("rest_em", "full")]  # full: every weight trained


def _policy(kind: str):
    model, tokenizer = load_model(TINY)
    if kind == "full":
        return model, tokenizer
    torch.manual_seed(0)
    model = get_peft_model(model, PolicyLoRA(r=4, alpha=8).peft_config())
    for name, p in model.named_parameters():
        if "lora_B" in name:  # nonzero, so both LoRA factors get gradients
            torch.nn.init.normal_(p, std=0.02)
    return model, tokenizer


def _mstep(rank: int, world: int, init_file: str | None, out: str | None) -> dict:
    """One M-step of each case (algorithm, LoRA or full policy) on ``EXAMPLES`` up to the optimiser:
    the loss (mean over ranks), the gradient of every trained weight, whole, and its norm as clipped."""
    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    found = {}
    for algorithm, kind in CASES:
        model, tokenizer = _policy(kind)
        examples = EXAMPLES[algorithm]
        if world > 1:
            shard(model, init_device_mesh("cpu", (world,), mesh_dim_names=("data_parallel",)))
        params = [p for p in model.parameters() if p.requires_grad]
        config = OuterConfig(algorithm=algorithm)
        examples = with_old_logps(model, tokenizer, config, examples, 256, 4)
        loss = step_loss(
            model, tokenizer, config, examples, 256, world, micro_batches(len(examples), world, rank, None)[0]
        )
        loss.backward()
        grads = {
            name: p.grad.full_tensor() if isinstance(p.grad, DTensor) else p.grad.clone()
            for name, p in model.named_parameters()
            if p.requires_grad
        }
        norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
        total = loss.detach().clone()
        if world > 1:
            dist.all_reduce(total)
        found[f"{algorithm} {kind}"] = {
            "loss": float(total) / world,
            "grads": grads,
            "norm": float(norm.full_tensor() if isinstance(norm, DTensor) else norm),
        }
    if world > 1:
        if rank == 0:
            torch.save(found, out)
        dist.destroy_process_group()
    return found


def test_one_mstep_on_two_fsdp_ranks_equals_one_process(tmp_path):
    out = tmp_path / "fsdp.pt"
    mp.spawn(_mstep, args=(2, str(tmp_path / "init"), str(out)), nprocs=2)
    sharded, single = torch.load(out, weights_only=True), _mstep(0, 1, None, None)
    assert sharded.keys() == single.keys() == {f"{a} {k}" for a, k in CASES}
    for case, want in single.items():
        got = sharded[case]
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-5, abs=1e-6), case
        assert got["grads"].keys() == want["grads"].keys()
        # LoRA: 2 blocks x 7 projections x (A, B); full: every weight, the tied head once
        assert len(want["grads"]) == (2 * 7 * 2 if case.endswith("lora") else 2 * 9 + 2)
        # The gradient, not the weights after AdamW: its first step is lr * g / (|g| + eps), whose slope
        # lr / eps turns a 1e-12 difference in summation order on a ~1e-9 gradient into 1e-5 of weight
        # (seen on an AVX2-only CPU). Beyond rtol, the gradients differ by < 4e-9 there.
        for name, g in want["grads"].items():
            torch.testing.assert_close(got["grads"][name], g, atol=1e-7, rtol=1e-4, msg=f"{case} {name}")
        # fp32 norms of the embedding gradient are off by ~1e-5 (float64 2.627014; one process 2.626943,
        # two shards 2.626966), so the two differ by more than the fp32 epsilon
        assert got["norm"] == pytest.approx(want["norm"], rel=1e-4), case


FIT = [
    sys.executable,
    "-m",
    "seal_lightning",
    "fit",
    "--config",
    str(CONFIGS / "fsdp_tiny.yaml"),
    "--trainer.max_epochs",
    "2",
    "--data.init_args.train_size",
    "8",  # 2 global batches an epoch
    "--trainer.callbacks.every_n_train_steps",
    "1",
]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([TESTS, os.environ.get("PYTHONPATH", "")])}


def _records(run):
    path = run / "checkpoints/fsdp_tiny/self_edits.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [json.loads(line) for line in lines if line.endswith("}")]


def _fit(cwd, extra=(), until=None) -> bool:
    """Run FIT in its own session; SIGKILL both processes once ``until()`` holds (True), or let it finish (False)."""
    proc = subprocess.Popen(
        FIT + list(extra),
        cwd=cwd,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    while proc.poll() is None:
        if until is not None and until():
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.05)
    assert proc.returncode == 0, proc.stderr.read()[-3000:]
    return False


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("fsdp")
    _fit(cwd, ["--trainer.callbacks+=weight_probe.WeightProbe", f"--trainer.callbacks.out={cwd / 'weights.json'}"])
    return cwd


def test_fsdp_fit_ledger_checkpoint_and_weights(fsdp_run):
    records = _records(fsdp_run)
    for epoch in (0, 1):  # 8 passages on 2 ranks, 3 self-edits each: every context once, from both ranks
        mine = [r for r in records if r["epoch"] == epoch]
        assert len(mine) == 8 * 3 and len({(r["context_id"], r["sample"]) for r in mine}) == 24
        assert {r["rank"] for r in mine} == {0, 1}
    last = fsdp_run / "checkpoints/fsdp_tiny/last.ckpt"
    assert sorted(p.name for p in last.iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp", "meta.pt"]
    saved = [k for k in FileSystemReader(last).read_metadata().state_dict_metadata if k.startswith("state_dict.")]
    assert saved and all("lora_" in k for k in saved)  # the frozen base is rebuilt, not saved
    ranks = json.loads((fsdp_run / "weights.json").read_text())
    assert [r["rank"] for r in ranks] == [0, 1] and ranks[0]["sums"] == ranks[1]["sums"]
    policy = rebuild_policy(last)
    sums = [float(p.detach().double().sum()) for p in policy.parameters() if p.requires_grad]
    assert sums == pytest.approx(ranks[0]["sums"], rel=1e-6)
    out = export_main(["--ckpt_path", str(last), "--output", str(fsdp_run / "exported"), "--mode", "adapter"])
    assert (out / "adapter_model.safetensors").is_file() and (out / "base" / "config.json").is_file()


def test_fsdp_sigkill_then_resume_matches_the_uninterrupted_run(fsdp_run, tmp_path):
    ckpts = tmp_path / "checkpoints/fsdp_tiny"
    assert _fit(tmp_path, until=lambda: (ckpts / "epoch=0-step=1.ckpt").exists()), "finished before the kill"
    assert not _fit(tmp_path, ["--ckpt_path", "last"])
    strip = lambda rs: [{k: v for k, v in r.items() if k != "seconds"} for r in rs]  # noqa: E731
    assert strip(_records(tmp_path)) == strip(_records(fsdp_run))
    resumed, whole = (rebuild_policy(run / "checkpoints/fsdp_tiny/last.ckpt") for run in (tmp_path, fsdp_run))
    for (name, a), b in zip(resumed.named_parameters(), whole.parameters()):
        if a.requires_grad:
            torch.testing.assert_close(a, b, msg=name)


def test_bad_fsdp_setups_fail_at_the_start():
    mixed = FSDP2Strategy(param_dtype="bfloat16", reduce_dtype="float32").mp_policy
    assert (mixed.param_dtype, mixed.reduce_dtype) == (torch.bfloat16, torch.float32)
    with pytest.raises(ValueError, match="tensor_parallel_size=2"):
        FSDP2Strategy(tensor_parallel_size=2)
    with pytest.raises(ValueError, match="'bf16' is not a torch dtype"):
        FSDP2Strategy(param_dtype="bf16")
    strategy = FSDP2Strategy(data_parallel_size=3)
    strategy.parallel_devices = [torch.device("cpu")] * 2
    with pytest.raises(ValueError, match="data_parallel_size=3 does not match the 2 processes"):
        strategy.setup_environment()
    with pytest.raises(TypeError, match="FSDP cannot wrap Linear"):
        decoder_blocks(torch.nn.Linear(2, 2))
    plain = SimpleNamespace(device_mesh=object(), trainer=SimpleNamespace(strategy=ModelParallelStrategy()))
    with pytest.raises(TypeError, match="ModelParallelStrategy: shard the policy with"):
        shard_policy(plain, torch.nn.Linear(2, 2))
    with pytest.raises(FileNotFoundError, match="nor a sharded checkpoint"):
        rebuild_policy("no/such/last.ckpt")


def test_a_sharded_checkpoint_that_does_not_fit_the_policy_is_named(fsdp_run):
    policy = SEALPolicy(model=TINY, lora=PolicyLoRA(r=8, alpha=16))  # the run's policy LoRA has r=4
    policy.configure_model()
    with pytest.raises(ValueError, match="does not fit the rebuilt policy"):
        read_shards(fsdp_run / "checkpoints/fsdp_tiny/last.ckpt", policy)
