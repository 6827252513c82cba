"""Few-shot ARC (SEAL §4.1): the self-edit is a training recipe for test-time training.

Given a task's demonstrations, the policy writes a JSON recipe (:mod:`.recipe`):
which augmentation groups build the leave-one-out training tasks and how to train on them. The
inner loop trains a LoRA adapter on those tasks with the recipe's learning rate and epochs, then
greedily predicts the test output from the few-shot prompt; the reward is 1 if the grid is exactly
right. Without a self-edit (the ``passage`` condition) the fixed :data:`DEFAULT_RECIPE` is used.
"""

from __future__ import annotations

from ...inner.engine import InnerJob
from ..base import SelfEditError, Task
from .augment import augmented_tasks
from .grids import GridParseError, format_example, format_pair, format_task_prompt, parse_grid
from .recipe import DEFAULT_RECIPE, EPOCHS_MAX, EPOCHS_MIN, LR_MAX, LR_MIN, ArcRecipe, all_recipes, parse_recipe

INSTRUCTION = (
    "You are configuring test-time training for a visual puzzle. Here are its demonstrations "
    "(grids of digits, one row per line):\n\n{demos}\n"
    "Choose how to augment these demonstrations and how to train on them. Answer with one JSON object:\n"
    '{{"data_generation": {{"use_basic_augmentations": true|false, "use_size_augmentations": true|false, '
    '"use_chain_augmentations": true|false, "use_repeat_augmentations": true|false}}, '
    '"training": {{"strategy": "train_using_all_tokens"|"train_using_output_tokens", '
    '"learning_rate": {lr_min:g} to {lr_max:g}, "num_train_epochs": {ep_min} to {ep_max}}}}}\n'
)
EXAMPLE = (
    "Example: {example}\n"  # free text only: a small model copies it, and constrained sampling needs no format hint
)


class ArcTask(Task):
    """Few-shot ARC with self-edits that choose augmentations and TTT hyperparameters.

    Args:
        max_tasks: augmented leave-one-out training tasks per inner update (leave-one-out first).
        max_epochs: this run's compute budget: a recipe asking for more epochs scores 0 (the
            prompt states the range, so the policy can learn it).
        max_chars: training sequences longer than this many characters are dropped (a grid costs
            one token per cell and newline, so characters bound tokens from above); keep it under
            the inner loop's ``max_length`` in tokens so no sequence is truncated.
        constrained: sample self-edits only among valid recipes (``recipe.all_recipes``: learning
            rates from ``LR_GRID``, up to ``max_epochs``), with the policy's own probabilities; a
            small model then always writes a usable recipe and RL learns which (the prompt then shows
            no example recipe, which a small model would copy). Off: free text, parsed strictly (the
            paper's setting).
    """

    metric = "solved"
    chat_questions = False
    condition_labels = {
        "no_update": "icl",
        "passage": "ttt_default",
        "base_self_edit": "self_edit_before_rl",
        "self_edit": "seal",
        "oracle": "oracle",
    }

    def __init__(
        self, max_tasks: int = 48, max_epochs: int = EPOCHS_MAX, max_chars: int = 2000, constrained: bool = False
    ) -> None:
        if max_tasks < 1 or max_chars < 1 or not EPOCHS_MIN <= max_epochs <= EPOCHS_MAX:
            raise ValueError(
                f"task: max_tasks, max_chars >= 1 and max_epochs in [{EPOCHS_MIN}, {EPOCHS_MAX}] "
                f"required, got {max_tasks}, {max_chars}, {max_epochs}"
            )
        self.max_tasks, self.max_epochs, self.max_chars = max_tasks, max_epochs, max_chars
        self.choices = [r.to_json() for r in all_recipes(max_epochs)] if constrained else None

    def self_edit_prompt(self, context: dict) -> str:
        demos = "\n".join(format_pair(i, o) for i, o in context["train"])
        prompt = INSTRUCTION.format(
            demos=demos, lr_min=LR_MIN, lr_max=LR_MAX, ep_min=EPOCHS_MIN, ep_max=self.max_epochs
        )
        return prompt if self.choices else prompt + EXAMPLE.format(example=DEFAULT_RECIPE.to_json())

    def self_edit_choices(self) -> list[str] | None:
        return self.choices

    def questions(self, context: dict) -> list[str]:
        test_input, _ = context["test"]
        return [format_task_prompt(context["train"], test_input)]

    def recipe(self, self_edit: str | None) -> ArcRecipe:
        return DEFAULT_RECIPE if self_edit is None else parse_recipe(self_edit)

    def inner_job(self, context: dict, self_edit: str | None, seed: int) -> InnerJob:
        recipe = self.recipe(self_edit)
        if recipe.num_train_epochs > self.max_epochs:
            raise SelfEditError(
                f"num_train_epochs {recipe.num_train_epochs} exceeds this run's budget of {self.max_epochs}"
            )
        if len(context["train"]) < 2:
            raise SelfEditError(f"task {context['id']}: test-time training needs at least 2 demonstrations")
        tasks = augmented_tasks(
            context["train"],
            recipe.use_basic_augmentations,
            recipe.use_size_augmentations,
            recipe.use_chain_augmentations,
            recipe.use_repeat_augmentations,
            seed=seed,
            max_tasks=self.max_tasks,
        )
        sequences = []
        for demos, (test_input, test_output) in tasks:
            prompt, completion = format_example(demos, test_input, test_output)
            if len(prompt) + len(completion) > self.max_chars:
                continue
            sequences.append(
                ("", prompt + completion) if recipe.strategy == "train_using_all_tokens" else (prompt, completion)
            )
        if not sequences:
            raise SelfEditError(f"task {context['id']}: every training task is longer than {self.max_chars} characters")
        # EOS after each output grid: the model learns to stop when the grid is complete
        return InnerJob(
            sequences,
            self.questions(context),
            seed=seed,
            lr=recipe.learning_rate,
            epochs=recipe.num_train_epochs,
            eos=True,
        )

    def grade(self, context: dict, answers: list[str]) -> dict[str, float]:
        (answer,) = answers
        try:
            return {"solved": float(parse_grid(answer) == context["test"][1])}
        except GridParseError:
            return {"solved": 0.0}

    def zero(self) -> dict[str, float]:
        return {"solved": 0.0}
