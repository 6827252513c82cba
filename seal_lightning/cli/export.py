"""``seal export``: write a trained policy checkpoint as a plain Hugging Face model directory.

A checkpoint holds the policy's hyperparameters and only its trainable weights (the policy LoRA,
or every weight after a full finetune): one file, or a directory of shards (``FSDP2Strategy``,
read in this process). The policy is rebuilt from those hyperparameters (model spec, dtype, LoRA,
inner and sampling settings), or from ``--config`` when given (the fit's YAML or the ``config.yaml``
it saved beside its logs, read by the ``seal`` parser); the checkpoint's weights are loaded on top,
and every checkpoint tensor must land on a parameter and every trainable parameter must come from it.

* ``merged`` (default): the LoRA merged into the base weights, with the tokenizer;
  ``AutoModelForCausalLM.from_pretrained(DIR)``.
* ``adapter``: the peft adapter in ``DIR``, the base model and tokenizer in ``DIR/base``;
  ``PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(DIR / "base"), DIR)``.
"""

from __future__ import annotations

import argparse
import inspect
import shutil
import tempfile
from pathlib import Path

import lightning as L
import torch
import yaml
from peft import PeftModel

from ..distributed import METADATA, read_shards
from ..inner import InnerConfig
from ..lm import PolicyLoRA
from ..policy import SamplingConfig, SEALPolicy
from .fit import SealCLI

MODES = ("merged", "adapter")


def rebuild_policy(ckpt_path: str | Path, config: str | Path | None = None) -> SEALPolicy:
    """The trained policy of ``ckpt_path``, built from its hyperparameters or from ``config``."""
    path = Path(ckpt_path)
    sharded = path.is_dir()  # FSDP2Strategy's: shards and Lightning's metadata
    if not (path / METADATA if sharded else path).is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r}: no such file, nor a sharded checkpoint with {METADATA}")
    checkpoint = torch.load(path / METADATA if sharded else path, map_location="cpu", weights_only=True)
    policy = from_config(config) if config is not None else _from_hparams(checkpoint, path)
    policy.configure_model()
    state = read_shards(path, policy) if sharded else checkpoint.get("state_dict") or {}
    trainable = {name for name, p in policy.named_parameters() if p.requires_grad}
    unexpected, missing = sorted(set(state) - set(policy.state_dict())), sorted(trainable - set(state))
    if unexpected or missing:
        raise ValueError(
            f"checkpoint {str(path)!r} does not match the policy rebuilt from "
            f"{'config ' + repr(str(config)) if config is not None else 'its hyperparameters'}: "
            f"{len(unexpected)} unknown tensors {unexpected[:3]}, "
            f"{len(missing)} trainable weights missing {missing[:3]}"
        )
    try:
        policy.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shapes differ, e.g. another LoRA rank
        raise ValueError(f"checkpoint {str(path)!r} does not fit the rebuilt policy: {err}") from None
    return policy.eval()


def _from_hparams(checkpoint: dict, path: Path) -> SEALPolicy:
    hparams = checkpoint.get("hyper_parameters") or {}
    if "model" not in hparams:
        raise ValueError(f"checkpoint {str(path)!r} has no SEALPolicy hyperparameters; pass --config")
    lora, inner, sampling = hparams.get("lora"), hparams.get("inner"), hparams.get("sampling")
    return SEALPolicy(
        model=hparams["model"],
        dtype=hparams.get("dtype", "float32"),
        lora=PolicyLoRA(**lora) if lora else None,
        inner=InnerConfig(**inner) if inner else InnerConfig(),  # what `seal adapt` trains with
        sampling=SamplingConfig(**sampling) if sampling else SamplingConfig(),
    )


def from_config(config: str | Path) -> SEALPolicy:
    """The policy a ``seal fit`` YAML describes (its model not yet loaded)."""
    # a config.yaml saved by `seal fit|test|...` also holds that stage's arguments (ckpt_path, ...)
    stage_args = {
        name
        for stage, skipped in SealCLI.subcommands().items()
        for name in inspect.signature(getattr(L.Trainer, stage)).parameters
        if name not in {*skipped, "self"}
    }
    args = {k: v for k, v in yaml.safe_load(Path(config).read_text()).items() if k not in stage_args}
    return SealCLI(args=args, run=False).model


def export(policy: SEALPolicy, output: str | Path, mode: str = "merged", overwrite: bool = False) -> Path:
    """Write ``policy`` to ``output`` (see the module docstring) and return it.

    The policy's model is merged or unloaded in place: rebuild the policy to use it again.
    """
    if mode not in MODES:
        raise ValueError(f"mode {mode!r}: choose from {list(MODES)}")
    output = Path(output)
    _check_output(output, overwrite)
    model = policy.model
    if mode == "adapter" and not isinstance(model, PeftModel):
        raise ValueError("policy has no LoRA adapter; use --mode merged")
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        if mode == "adapter":
            model.peft_config[model.active_adapter].base_model_name_or_path = str(output.resolve() / "base")
            model.save_pretrained(tmp, safe_serialization=True, save_embedding_layers=False)  # vocab never resized
            _save(model.unload(), policy.tokenizer, tmp / "base")
        else:
            _save(model.merge_and_unload() if isinstance(model, PeftModel) else model, policy.tokenizer, tmp)
        if output.exists():
            shutil.rmtree(output)
        tmp.rename(output)  # a failed export never leaves a half-written output
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return output


def _check_output(output: Path, overwrite: bool) -> None:
    if not output.exists() or (output.is_dir() and not any(output.iterdir())):
        return
    if not overwrite:
        raise FileExistsError(f"output {str(output)!r} exists and is not empty; pass --overwrite to replace it")
    if not any((output / name).is_file() for name in ("config.json", "adapter_config.json")):
        raise FileExistsError(f"output {str(output)!r} is not a model directory; --overwrite replaces only those")


def _save(model: torch.nn.Module, tokenizer, directory: Path) -> None:
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)


def main(args: list[str] | None = None) -> Path:
    """``seal export --ckpt_path CKPT --output DIR [--config YAML] [--mode merged|adapter] [--overwrite]``."""
    parser = argparse.ArgumentParser(prog="seal export", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--ckpt_path", required=True, help="a checkpoint written by `seal fit` (e.g. last.ckpt; a directory under FSDP)"
    )
    parser.add_argument("--output", required=True, help="the model directory to write")
    parser.add_argument("--config", help="the fit's YAML; default: the checkpoint's hyperparameters")
    parser.add_argument(
        "--mode", choices=MODES, default="merged", help="LoRA merged into the weights, or adapter + base"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing model directory")
    opts = parser.parse_args(args)
    _check_output(Path(opts.output), opts.overwrite)  # fail before loading the model
    out = export(rebuild_policy(opts.ckpt_path, opts.config), opts.output, opts.mode, opts.overwrite)
    print(f"exported the {opts.mode} policy to {out}")
    return out
