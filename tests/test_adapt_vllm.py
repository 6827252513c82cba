"""`seal adapt`'s output in vLLM: its base directory and per-document adapters load in a plain
``vllm.LLM`` with a ``LoRARequest``, and answer as peft does (SmolLM2, fp32, near-ties aside)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from conftest import NEEDS_VLLM

pytestmark = NEEDS_VLLM

from peft import PeftModel  # noqa: E402
from test_vllm import TIE, divergences  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from seal_lightning.cli import main  # noqa: E402
from seal_lightning.tasks.knowledge import KnowledgeTask, load_passages  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def test_adapted_documents_load_in_vllm_and_answer_as_peft(tmp_path):
    out = tmp_path / "adapted"
    main(
        [
            "adapt",
            "--config",
            str(ROOT / "configs" / "quickstart.yaml"),
            "--documents",
            "builtin:fictional",
            "--limit",
            "2",
            "--output",
            str(out),
            "--no_progress",
        ]
    )
    records = [json.loads(line) for line in (out / "ledger.jsonl").read_text().splitlines()]
    assert len(records) == 2 and all(r["adapter"] for r in records)
    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest

    tok = AutoTokenizer.from_pretrained(out / "base")
    llm = LLM(
        model=str(out / "base"),
        dtype="float32",
        enable_lora=True,
        max_lora_rank=32,
        max_model_len=1024,
        kv_cache_memory_bytes=1 << 30,
    )
    params = SamplingParams(temperature=0.0, max_tokens=16)
    docs = {d["id"]: d for d in load_passages("builtin:fictional")[:2]}
    agreed = 0
    for k, record in enumerate(records):
        prompts = [_chat(tok, q) for q in KnowledgeTask().questions(docs[record["id"]])]
        request = LoRARequest(f"doc{k}", k + 1, str(out / record["adapter"]))
        outputs = llm.generate(prompts, params, lora_request=request, use_tqdm=False)
        ids = [list(o.outputs[0].token_ids) for o in outputs]
        peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(out / "base"), out / record["adapter"])
        with torch.no_grad():
            found = divergences(peft.eval(), tok, prompts, ids, 16)
        assert all(margin < TIE for _, _, margin in found), (k, found)
        agreed += len(prompts) - len(found)
    assert agreed >= 4


def _chat(tok, text: str) -> str:
    return tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)
