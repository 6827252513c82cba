"""scripts/gpu_smoke.sh: valid bash, and its CPU fallback runs every step at the tiny model's size and
writes every figure to one JSON (on a GPU the same steps run at Qwen2.5-7B's shape)."""

import json
import os
import subprocess
import sys

from conftest import ROOT

SCRIPT = ROOT / "scripts" / "gpu_smoke.sh"


def test_the_script_is_valid_bash():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    subprocess.run([sys.executable, "-m", "py_compile", str(ROOT / "scripts" / "random_model.py")], check=True)


def test_its_cpu_fallback_writes_every_figure(tmp_path):
    env = os.environ | {"SMOKE_CPU": "1", "PYTHON": sys.executable, "SMOKE_WORK": str(tmp_path / "work")}
    run = subprocess.run(
        ["bash", str(SCRIPT), str(tmp_path / "out")], env=env, capture_output=True, text=True, timeout=900
    )
    assert run.returncode == 0, run.stdout + run.stderr
    report = json.loads((tmp_path / "out" / "gpu_smoke.json").read_text())
    steps = report["steps"]
    assert report["mode"] == "cpu" and {
        k: steps[k]["exit"] for k in ("env", "inner_loop", "plan", "round")
    } == dict.fromkeys(("env", "inner_loop", "plan", "round"), 0), steps
    assert steps["random_model"]["exit"] == "skipped" and "CPU fallback" in steps["vllm_tests"]["why"]
    assert report["env"]["seal_lightning"] and report["env"]["gpus"] == 0
    rows = [r for r in report["inner_loop"]["rows"] if r["engine"] == "batched"]
    assert [r["k"] for r in rows] == [1, 2] and all(r["train_tokens_per_second"] > 0 for r in rows)
    plan = report["plan"]
    assert plan["devices"] == 2 and plan["params"] == 7_615_616_512 and plan["round"]["seconds"] > 0  # timed by it
    assert report["round"]["self_edits"] == 4 * 2 and report["round"]["rounds_json"]  # 4 passages x K=2
