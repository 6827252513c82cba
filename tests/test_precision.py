"""Precision and generation speed-ups: the bf16 inner loop keeps fp32 adapters and tracks the fp32
run, generation from a merged copy equals generation through peft, the output head sees
contiguous inputs, and ``inner.dtype`` decides the frozen copy's dtype."""

import copy
import dataclasses

import pytest
import torch
from lora_noise import perturb_lora
from peft import get_peft_model

from seal_lightning import InnerConfig, PolicyLoRA, SamplingConfig, SEALPolicy
from seal_lightning.generation.hf import generate, merged
from seal_lightning.inner import InnerJob
from seal_lightning.inner.batched import BatchedLoRA
from seal_lightning.lm.models import TINY, fast_bf16

CFG = InnerConfig(r=4, alpha=8, lr=3e-2, epochs=5, batch_size=2, answer_tokens=4, max_adapters=4, memory_budget=4.0)
LINES = [
    "Velmora was founded in 1623 by the merchant Arlen Quist.",
    "Its main export is copper.",
    "The river Sul flows through the old town and into the Bay of Tam.",
    "Population: 4100.",
]
PROMPTS = ["The river that runs through the old town is called", "Hello"]


def _jobs() -> list[InnerJob]:
    return [
        InnerJob([("", line) for line in LINES[k:] + LINES[:k]], ["Who founded Velmora?", "Its export?"], seed=k)
        for k in range(3)
    ]


def test_bf16_inner_loop_keeps_fp32_adapters_and_tracks_fp32(tiny):
    model, tok = tiny
    runs = {}
    for dtype in (torch.float32, torch.bfloat16):
        engine = BatchedLoRA(CFG)
        runs[dtype] = engine.run(copy.deepcopy(model).to(dtype).requires_grad_(False), tok, _jobs())
        layer = next(iter(engine.layers.values()))
        assert layer.base.weight.dtype == dtype and layer.A.dtype == layer.B.dtype == torch.float32
    for a, b in zip(runs[torch.float32], runs[torch.bfloat16]):
        assert a.error is None and b.error is None and a.steps == b.steps and len(b.answers) == 2
        first = a.extra["losses"][0]  # before any update: the same model in two precisions
        assert abs(b.extra["losses"][0] - first) < 0.02 * first
        drop_fp32, drop_bf16 = first - a.loss, b.extra["losses"][0] - b.loss
        assert drop_fp32 > 0.02 * first  # the update teaches (a random 2-layer model learns slowly)
        assert abs(drop_bf16 - drop_fp32) < 0.35 * drop_fp32  # and the bf16 run learns about as much


def test_sampling_from_the_merged_copy_equals_sampling_through_peft(tiny):
    model, tok = tiny
    # a trained-looking adapter, so merging changes something
    policy = perturb_lora(get_peft_model(copy.deepcopy(model), PolicyLoRA(r=4, alpha=8).peft_config()), 0.05)
    kwargs = dict(max_new_tokens=12, num_return_sequences=2, do_sample=True, temperature=0.7, top_p=0.9, seed=3)
    through_peft = generate(policy, tok, PROMPTS, **kwargs)
    assert generate(merged(policy, base=False), tok, PROMPTS, **kwargs) == through_peft
    with policy.disable_adapter():
        base = generate(policy, tok, PROMPTS, **kwargs)
    assert generate(merged(policy, base=True), tok, PROMPTS, **kwargs) == base != through_peft
    assert isinstance(policy.get_base_model().model.layers[0].self_attn.q_proj.lora_A["default"], torch.nn.Linear)


def test_the_output_head_gets_contiguous_inputs(tiny):
    model, tok = tiny
    seen = []
    handle = model.get_output_embeddings().register_forward_pre_hook(
        lambda m, args: seen.append(args[0].is_contiguous())
    )
    try:
        generate(model, tok, PROMPTS, max_new_tokens=3)  # the prefill's last position is a strided view
    finally:
        handle.remove()
    assert seen and all(seen)


@pytest.mark.parametrize("inner_dtype", ["float32", "bfloat16", "auto"])
def test_inner_dtype_sets_the_frozen_copy(inner_dtype):
    policy = SEALPolicy(
        model=TINY, inner=dataclasses.replace(CFG, dtype=inner_dtype), sampling=SamplingConfig(max_new_tokens=8)
    )
    policy.configure_model()
    expected = {
        "float32": torch.float32,
        "bfloat16": torch.bfloat16,
        "auto": torch.bfloat16 if fast_bf16() else torch.float32,
    }[inner_dtype]
    frozen = policy.rollout.frozen_copy()
    assert next(frozen.parameters()).dtype == expected
    assert next(policy.model.parameters()).dtype == torch.float32  # the policy itself stays as loaded
