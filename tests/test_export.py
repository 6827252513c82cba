"""`seal export`: a trained tiny policy loads with plain transformers / peft and behaves like the policy."""

import pytest
import torch
from conftest import CONFIGS, fit_tiny
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from seal_lightning import PolicyLoRA, SEALPolicy
from seal_lightning.cli import main
from seal_lightning.lm.models import TINY

PROMPTS = ["The river that runs through the old town is called", "Hello"]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """The tiny model gains nothing from threads; one avoids OpenMP stalls when the CPU is shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def full_ckpt(tmp_path_factory):
    return fit_tiny(tmp_path_factory.mktemp("full"), "--model.lora", "null")


def _reference(ckpt, lora: PolicyLoRA | None) -> SEALPolicy:
    """The policy rebuilt by hand, as `seal test --ckpt_path` would: base model + checkpoint weights."""
    policy = SEALPolicy(model=TINY, lora=lora)
    policy.configure_model()
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    assert not policy.load_state_dict(state, strict=False).unexpected_keys
    return policy.eval()


@torch.no_grad()
def _run(model, tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of the prompts and 8 greedy tokens per prompt (left padding)."""
    model.eval()
    enc = tokenizer(PROMPTS, return_tensors="pt", padding=True, padding_side="left")
    logits = model(**enc).logits
    out = model.generate(
        **enc, max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id
    )
    return logits, out[:, enc["input_ids"].shape[1] :]


def _assert_same(exported, tokenizer, policy: SEALPolicy) -> None:
    logits, tokens = _run(exported, tokenizer)
    ref_logits, ref_tokens = _run(policy.model, policy.tokenizer)
    assert tokens.shape == (2, 8) and torch.equal(tokens, ref_tokens)
    torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=0)


def test_merged_export_loads_with_plain_transformers(lora_ckpt, tmp_path):
    out = tmp_path / "merged"
    main(["export", "--ckpt_path", str(lora_ckpt), "--output", str(out)])
    assert (out / "model.safetensors").is_file() and not (out / "adapter_config.json").exists()
    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    policy = _reference(lora_ckpt, PolicyLoRA(r=4, alpha=8))
    assert tokenizer.chat_template and tokenizer.chat_template == policy.tokenizer.chat_template
    base = policy.model.get_base_model().model.layers[0].self_attn.q_proj.base_layer.weight
    merged = model.model.layers[0].self_attn.q_proj.weight
    assert not torch.allclose(merged, base)  # the trained LoRA is in the weights
    _assert_same(model, tokenizer, policy)


def test_adapter_export_loads_with_plain_peft(lora_ckpt, tmp_path):
    out = tmp_path / "adapter"
    saved = next(lora_ckpt.parent.glob("logs/version_*/config.yaml"))  # the config `seal fit` saved
    main(["export", "--ckpt_path", str(lora_ckpt), "--output", str(out), "--mode", "adapter", "--config", str(saved)])
    assert (out / "adapter_model.safetensors").is_file() and (out / "base" / "model.safetensors").is_file()
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(out / "base"), out)
    assert model.peft_config["default"].base_model_name_or_path == str((out / "base").resolve())
    _assert_same(model, AutoTokenizer.from_pretrained(out / "base"), _reference(lora_ckpt, PolicyLoRA(r=4, alpha=8)))


def test_full_finetune_exports_full_weights(full_ckpt, tmp_path):
    out = tmp_path / "full"
    main(["export", "--ckpt_path", str(full_ckpt), "--output", str(out)])
    model = AutoModelForCausalLM.from_pretrained(out)
    policy = _reference(full_ckpt, None)
    untrained = SEALPolicy(model=TINY, lora=None)
    untrained.configure_model()
    trained_q = model.model.layers[0].self_attn.q_proj.weight
    assert not torch.allclose(trained_q, untrained.model.model.layers[0].self_attn.q_proj.weight)
    _assert_same(model, AutoTokenizer.from_pretrained(out), policy)
    with pytest.raises(ValueError, match="policy has no LoRA adapter; use --mode merged"):
        main(["export", "--ckpt_path", str(full_ckpt), "--output", str(tmp_path / "a"), "--mode", "adapter"])
    assert not (tmp_path / "a").exists()


def test_missing_checkpoint_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.ckpt"):
        main(["export", "--ckpt_path", str(tmp_path / "nope.ckpt"), "--output", str(tmp_path / "out")])


def test_non_empty_output_needs_overwrite(lora_ckpt, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="--overwrite"):
        main(["export", "--ckpt_path", str(lora_ckpt), "--output", str(out)])
    with pytest.raises(FileExistsError, match="not a model directory"):  # --overwrite replaces only exports
        main(["export", "--ckpt_path", str(lora_ckpt), "--output", str(out), "--overwrite"])
    assert (out / "notes.txt").read_text() == "mine"
    (out / "notes.txt").unlink()
    main(["export", "--ckpt_path", str(lora_ckpt), "--output", str(out), "--mode", "adapter"])
    main(["export", "--ckpt_path", str(lora_ckpt), "--output", str(out), "--overwrite"])
    assert (out / "model.safetensors").is_file() and not (out / "adapter_config.json").exists()
    assert not list(tmp_path.glob(".out.*"))  # no temporary directory left behind


def test_mismatched_config_names_checkpoint(lora_ckpt, tmp_path):
    config = tmp_path / "r8.yaml"  # the tiny config with another policy LoRA rank than the checkpoint's
    config.write_text((CONFIGS / "tiny.yaml").read_text().replace("lora: {r: 4, alpha: 8}", "lora: {r: 8, alpha: 16}"))
    with pytest.raises(ValueError, match="last.ckpt"):
        main(["export", "--ckpt_path", str(lora_ckpt), "--output", str(tmp_path / "x"), "--config", str(config)])
    assert not (tmp_path / "x").exists()
