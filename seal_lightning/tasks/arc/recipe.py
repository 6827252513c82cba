"""The few-shot ARC self-edit: a JSON recipe that picks augmentations and test-time-training settings.

The policy writes (SEAL §4.1)::

    {"data_generation": {"use_basic_augmentations": true, "use_size_augmentations": true,
                         "use_chain_augmentations": false, "use_repeat_augmentations": false},
     "training": {"strategy": "train_using_output_tokens", "learning_rate": 0.0001, "num_train_epochs": 3}}

or the same seven keys at the top level. Parsing is strict, so a sloppy self-edit earns no reward
instead of a silently guessed recipe: the JSON value starts at the first ``{`` or ``[`` of the
text (prose and code fences around it are ignored) and is read by ``json`` only, never evaluated;
it must be one object with exactly the expected keys (no unknown, missing or repeated key);
switches must be JSON ``true``/``false`` (not ``1`` or ``"true"``); the epoch count must be a
JSON integer (``2``, not ``2.0``); the learning rate and epochs must lie in the bounds below.
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import asdict, dataclass
from typing import Any

from ..base import SelfEditError

LR_MIN, LR_MAX = 1e-6, 1e-2
EPOCHS_MIN, EPOCHS_MAX = 1, 10
STRATEGIES = ("train_using_all_tokens", "train_using_output_tokens")
DATA_KEYS = ("use_basic_augmentations", "use_size_augmentations", "use_chain_augmentations", "use_repeat_augmentations")
TRAINING_KEYS = ("strategy", "learning_rate", "num_train_epochs")
LR_GRID = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)  # the learning rates of constrained self-edits (``all_recipes``)


@dataclass(frozen=True)
class ArcRecipe:
    """A validated self-edit: which augmentation groups to use and how to train (raises SelfEditError)."""

    use_basic_augmentations: bool
    use_size_augmentations: bool
    use_chain_augmentations: bool
    use_repeat_augmentations: bool
    strategy: str
    learning_rate: float
    num_train_epochs: int

    def __post_init__(self) -> None:
        for key in DATA_KEYS:
            if type(getattr(self, key)) is not bool:
                raise SelfEditError(f"{key} must be true or false, got {_show(getattr(self, key))}")
        if self.strategy not in STRATEGIES:
            raise SelfEditError(f"strategy must be one of {', '.join(STRATEGIES)}, got {_show(self.strategy)}")
        lr = self.learning_rate
        if type(lr) not in (int, float) or not (LR_MIN <= lr <= LR_MAX):  # NaN fails the comparison too
            raise SelfEditError(f"learning_rate must be a number in [{LR_MIN:g}, {LR_MAX:g}], got {_show(lr)}")
        epochs = self.num_train_epochs
        if type(epochs) is not int or not EPOCHS_MIN <= epochs <= EPOCHS_MAX:
            raise SelfEditError(
                f"num_train_epochs must be a whole number in [{EPOCHS_MIN}, {EPOCHS_MAX}], got {_show(epochs)}"
            )

    def to_json(self) -> str:
        """The nested form the policy writes."""
        fields = asdict(self)
        return json.dumps(
            {"data_generation": {k: fields[k] for k in DATA_KEYS}, "training": {k: fields[k] for k in TRAINING_KEYS}}
        )


#: The fixed test-time-training recipe (no self-edit): geometric, colour, size and chained
#: augmentations, loss on every token, the inner loop's LoRA learning rate (1e-3, the rate SEAL
#: uses for LoRA on its knowledge task) and two passes over the augmented tasks.
DEFAULT_RECIPE = ArcRecipe(
    use_basic_augmentations=True,
    use_size_augmentations=True,
    use_chain_augmentations=True,
    use_repeat_augmentations=False,
    strategy="train_using_all_tokens",
    learning_rate=1e-3,
    num_train_epochs=2,
)


def all_recipes(max_epochs: int = EPOCHS_MAX) -> list[ArcRecipe]:
    """Every recipe with a learning rate from ``LR_GRID`` and at most ``max_epochs`` epochs: the finite
    set a constrained policy samples from (``ArcTask(constrained=True)``)."""
    switches = itertools.product((True, False), repeat=len(DATA_KEYS))
    return [
        ArcRecipe(*flags, strategy, lr, epochs)
        for flags, strategy, lr, epochs in itertools.product(
            switches, STRATEGIES, LR_GRID, range(EPOCHS_MIN, max_epochs + 1)
        )
    ]


def parse_recipe(text: str) -> ArcRecipe:
    """The recipe in a self-edit (nested or flat form); raises SelfEditError saying what is wrong."""
    start = re.search(r"[{\[]", text)
    if start is None:
        raise SelfEditError("no JSON object in the self-edit")
    try:
        value, _ = json.JSONDecoder(object_pairs_hook=_unique_keys).raw_decode(text, start.start())
    except json.JSONDecodeError as err:
        raise SelfEditError(f"invalid JSON at line {err.lineno}, column {err.colno}: {err.msg}") from None
    if not isinstance(value, dict):  # the value started with "["
        raise SelfEditError("expected a JSON object, got a JSON array")
    if "data_generation" in value or "training" in value:
        _check_keys(value, ("data_generation", "training"), "the self-edit")
        data, training = value["data_generation"], value["training"]
        for name, section in (("data_generation", data), ("training", training)):
            if not isinstance(section, dict):
                raise SelfEditError(f"{name} must be an object, got {_show(section)}")
        _check_keys(data, DATA_KEYS, "data_generation")
        _check_keys(training, TRAINING_KEYS, "training")
        value = {**data, **training}
    else:
        _check_keys(value, DATA_KEYS + TRAINING_KEYS, "the self-edit")
    return ArcRecipe(**value)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    keys = [k for k, _ in pairs]
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:
        raise SelfEditError(f"repeated key {repeated[0]!r}")
    return dict(pairs)


def _check_keys(obj: dict, expected: tuple[str, ...], where: str) -> None:
    unknown = [k for k in obj if k not in expected]
    if unknown:
        raise SelfEditError(f"unknown key {unknown[0]!r} in {where}; expected {', '.join(expected)}")
    missing = [k for k in expected if k not in obj]
    if missing:
        raise SelfEditError(f"missing key {missing[0]!r} in {where}")


def _show(value: Any) -> str:
    """A value as JSON, so ``"true"`` and ``true`` read differently in messages."""
    return json.dumps(value)
