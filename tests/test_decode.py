"""The decode loop (``generation/decode.py``) against transformers: grouped attention equals eager
attention, the nucleus equals the temperature and top-p warpers, greedy decoding equals ``generate``."""

import pytest
import torch
from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper
from transformers.models.llama.modeling_llama import eager_attention_forward

from seal_lightning.generation import decode as decode_module
from seal_lightning.generation.decode import decode, grouped_attention, nucleus
from seal_lightning.generation.hf import answer_scored, generate
from seal_lightning.lm.sft import target_logprobs


class _Module(torch.nn.Module):
    num_key_value_groups = 3


@pytest.mark.parametrize("q_len", [1, 5])
def test_grouped_attention_equals_eager_attention(q_len):
    torch.manual_seed(0)
    b, heads, kv_heads, length, d = 2, 6, 2, 9, 8
    query = torch.randn(b, heads, q_len, d)
    key, value = torch.randn(b, kv_heads, length, d), torch.randn(b, kv_heads, length, d)
    mask = torch.zeros(b, 1, q_len, length)
    mask[0, :, :, :3] = torch.finfo(torch.float32).min  # left padding of row 0
    mask[:, :, :, -q_len:] += torch.triu(torch.full((q_len, q_len), torch.finfo(torch.float32).min), 1)
    module = _Module().eval()
    expected, _ = eager_attention_forward(module, query, key, value, mask, scaling=d**-0.5)
    ours, weights = grouped_attention(module, query, key, value, mask, scaling=d**-0.5)
    assert weights is None and ours.shape == expected.shape == (b, q_len, heads, d)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("candidates", [1024, 16])  # 16: the nucleus spills past the candidates
def test_nucleus_equals_the_temperature_and_top_p_warpers(monkeypatch, candidates):
    monkeypatch.setattr(decode_module, "CANDIDATES", candidates)
    torch.manual_seed(0)
    logits = torch.cat([torch.randn(3, 5000) * 4, torch.randn(1, 5000) * 0.1])  # peaked rows, one nearly flat
    temperature, top_p = 0.7, 0.9
    warped = TopPLogitsWarper(top_p)(None, TemperatureLogitsWarper(temperature)(None, logits.clone()))
    expected = warped.softmax(-1)
    probs, index = nucleus(logits, temperature, top_p)
    ours = torch.zeros_like(logits).scatter(1, index, probs)
    ours = ours / ours.sum(-1, keepdim=True)
    assert (ours > 0).sum(-1).tolist() == (expected > 0).sum(-1).tolist()
    assert (expected[3] > 0).sum() > candidates  # the flat row needed the whole vocabulary
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-7)


def test_greedy_decode_equals_transformers_generate_with_padding_and_copies(tiny):
    model, tok = tiny
    prompts = ["Hello there, how are", "The capital of France is a city called", "x"]
    expected = []
    for prompt in prompts:
        enc = tok([prompt], return_tensors="pt")
        out = model.generate(
            **enc, max_new_tokens=10, do_sample=False, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id
        )
        expected.append(out[0, enc["input_ids"].shape[1] :].tolist())
    enc = tok(prompts, return_tensors="pt", padding=True, padding_side="left")
    rows = decode(model, enc, max_new_tokens=10, eos=tok.eos_token_id, k=2).tokens
    assert rows == [e for e in expected for _ in range(2)]
    assert model.config._attn_implementation == "sdpa"  # restored after decoding


def test_sampling_is_seeded_and_stop_strings_end_rows(tiny):
    model, tok = tiny
    kwargs = dict(max_new_tokens=12, num_return_sequences=3, do_sample=True, temperature=0.7, top_p=0.9)
    first = generate(model, tok, ["a b c", "d e"], seed=1, **kwargs)
    assert len(first) == 6 and len(set(first)) == 6
    assert (
        generate(model, tok, ["a b c", "d e"], seed=1, **kwargs)
        == first
        != generate(model, tok, ["a b c", "d e"], seed=2, **kwargs)
    )
    stop = first[0].split()[1]  # a word the seeded row writes
    cut = generate(model, tok, ["a b c", "d e"], seed=1, stop=stop, **kwargs)
    assert cut[0] == first[0].split(stop, 1)[0].strip() and all(stop not in text for text in cut)


def test_answers_scored_in_one_prefill_equal_answering_and_scoring_apart(tiny):
    """The targets ride along in the answers' prefill: the same greedy answers as ``generate`` and the
    same log-probabilities as the packed teacher-forced pass, targets of different lengths included."""
    model, tok = tiny
    questions = ["Hello there, how are", "The capital of France is a city called", "x", "a b c d"]
    targets = ["you today", "Paris", "y z w v u", "e"]
    answers, logprobs = answer_scored(model, tok, questions, targets, max_new_tokens=8, batch_size=3)
    assert answers == generate(model, tok, questions, max_new_tokens=8, batch_size=3)
    expected = target_logprobs(model, tok, questions, targets, 512)
    assert logprobs == pytest.approx(expected, rel=1e-5)
    assert len({round(v, 3) for v in logprobs}) == 4  # four different numbers, not one repeated
