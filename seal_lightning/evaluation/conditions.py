"""Held-out evaluation: each context scored under several conditions, one row per context and condition.

``no_update`` (closed-book before any update), ``passage`` (an update on the context alone),
``synthetic`` (on a self-edit written elsewhere), ``base_self_edit`` (on self-edits of the model
before RL), ``self_edit`` (of the current policy), ``oracle`` (the best of those samples), and
``self_edit:<prompt>`` for each prompt variant; continued pretraining and forgetting add their own.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lightning.pytorch.utilities import rank_zero_warn
from peft import PeftModel

from ..rollout import Rollout
from ..utils import Span, derive_seed, gather
from .cpt import continued_pretraining
from .forgetting import forgetting
from .results import unique_rows

CONDITIONS = ("no_update", "passage", "synthetic", "base_self_edit", "self_edit", "oracle")
DEFAULT_CONDITIONS = ("no_update", "passage", "base_self_edit", "self_edit", "oracle")
DEFAULT_SEED = 1234  # evaluation's seed is seed_everything + this (see ``EvalConfig.seed``)


@dataclass(frozen=True)
class EvalConfig:
    """Held-out evaluation: which conditions, and how many self-edits are averaged per context.

    ``conditions`` may add ``synthetic``: a self-edit written elsewhere, read from the DataModule's
    ``synthetic`` file. ``prompts``: also score the current policy's self-edits written from each of these self-edit
    prompts (names in ``KnowledgeTask``'s ``PROMPTS`` or templates), as conditions ``self_edit:<prompt>``.
    ``continued_pretraining``: also one update on all evaluated contexts at once (``evaluation.cpt``).
    ``forgetting``: also apply the evaluated contexts' self-edits one after another to one model and
    record the retention matrix (``evaluation.forgetting``).
    ``fit_conditions``: the conditions of validations inside ``seal fit`` (after each round), when
    they should differ from ``conditions`` (e.g. only ``self_edit``; the baselines are scored once,
    before training, with ``--validate_before_fit true``).
    ``seed``: of evaluation sampling and inner updates; unset, ``seal`` takes ``seed_everything + 1234``
    (1234 outside the CLI).
    ``reference``: every condition's paired difference over the same contexts is taken to this one
    (``<metric>_delta`` in the summary, the Δ columns of the table); the one to ``passage`` is
    always there too (``<metric>_vs_passage``).
    """

    conditions: list[str] = field(default_factory=lambda: list(DEFAULT_CONDITIONS))
    fit_conditions: list[str] | None = None
    prompts: list[str] = field(default_factory=list)
    continued_pretraining: bool = False
    forgetting: bool = False
    samples: int = 1
    seed: int | None = None
    reference: str = "base_self_edit"


class Evaluator:
    """Collects the rows of one validation/test stage, batch by batch, and finishes them at its end."""

    def __init__(self, config: EvalConfig, rollout: Rollout) -> None:
        named = {
            "conditions": config.conditions,
            "fit_conditions": config.fit_conditions or [],
            "reference": [config.reference],
        }
        for name, values in named.items():
            unknown = set(values) - set(CONDITIONS)
            if unknown:
                raise ValueError(f"model.eval.{name}: unknown {sorted(unknown)}; choose from {list(CONDITIONS)}")
        self.config, self.rollout = config, rollout
        self.seed = DEFAULT_SEED if config.seed is None else config.seed
        self.variants = {p: rollout.task.with_prompt(p) for p in config.prompts}
        self.rows: list[dict] = []
        self.contexts: list[dict] = []  # for continued pretraining / forgetting at the end of the stage
        self.span: Span | None = None  # the stage under way, from its first step to ``finish``
        self.stats: dict[str, float] = {}  # the last finished stage's ``seconds`` and ``peak_rss_gb``

    def step(self, contexts: list[dict], in_fit: bool) -> None:
        """Score ``contexts`` under every condition; ``in_fit``: a validation inside ``seal fit``
        (``fit_conditions`` when set, and then no prompt variants, CPT or forgetting)."""
        self.span = self.span or Span().start()
        with self.rollout.whole_weights():
            self._step(contexts, in_fit)

    def _step(self, contexts: list[dict], in_fit: bool) -> None:
        cfg, rollout = self.config, self.rollout
        in_fit = in_fit and cfg.fit_conditions is not None
        conditions = cfg.fit_conditions if in_fit else cfg.conditions
        variants, n = {} if in_fit else self.variants, cfg.samples
        if not in_fit and (cfg.continued_pretraining or cfg.forgetting):
            self.contexts += contexts
        if "base_self_edit" in conditions and not isinstance(rollout.model, PeftModel):
            rank_zero_warn("base_self_edit needs a LoRA policy (the base is the policy without its adapter); skipped")
            conditions = [c for c in conditions if c != "base_self_edit"]
        seed = derive_seed(self.seed, [c["id"] for c in contexts])
        edits: list[list[str | None]] = [[] for _ in contexts]
        labels: list[str] = []
        if "passage" in conditions:
            edits = [row + [None] for row in edits]
            labels.append("passage")
        if "synthetic" in conditions:
            missing = [c["id"] for c in contexts if not c.get("synthetic")]
            if missing:
                raise ValueError(
                    f"model.eval.conditions has 'synthetic' but context {missing[0]!r} has no "
                    "synthetic text (data.init_args.synthetic)"
                )
            edits = [row + [c["synthetic"]] for row, c in zip(edits, contexts)]
            labels.append("synthetic")
        for condition in ("base_self_edit", "self_edit"):
            if condition in conditions:
                base = condition == "base_self_edit"
                _, sampled = rollout.sample(contexts, n, seed, base=base, for_scoring=not base)
                edits = [row + list(s) for row, s in zip(edits, sampled)]
                labels += [condition] * n
        for name, variant in variants.items():
            _, sampled = rollout.sample(contexts, n, seed, task=variant, for_scoring=True)
            edits = [row + list(s) for row, s in zip(edits, sampled)]
            labels += [f"self_edit:{name}"] * n
        baseline, outcomes = rollout.score_updates(contexts, edits, seed)
        sampled = [label in ("base_self_edit", "self_edit") for label in labels]
        if "oracle" in conditions and not any(sampled):
            rank_zero_warn("oracle needs self_edit or base_self_edit samples; skipped")
        for context, before, row, texts in zip(contexts, baseline, outcomes, edits):
            error = {"error": before.error} if before.error else {}
            if "no_update" in conditions:
                self.rows.append({"context_id": context["id"], "condition": "no_update", **before.scores, **error})
            for condition in dict.fromkeys(labels):
                picked = [o for o, label in zip(row, labels) if label == condition]
                mean = {k: sum(o.scores[k] for o in picked) / len(picked) for k in picked[0].scores}
                failed = [o.error for o in picked if o.error and o.error != before.error]
                written = [t for t, label in zip(texts, labels) if label == condition and t is not None]
                self.rows.append(
                    {
                        "context_id": context["id"],
                        "condition": condition,
                        **mean,
                        **error,
                        **({"errors": failed} if failed else {}),
                        **({"texts": written} if written else {}),
                    }
                )
            if "oracle" in conditions and any(sampled):
                best = max((o.scores for o, s in zip(row, sampled) if s), key=lambda s: s[rollout.task.metric])
                self.rows.append({"context_id": context["id"], "condition": "oracle", **best, **error})

    def finish(self, sanity_checking: bool) -> tuple[list[dict], dict | None]:
        """Every rank's rows (each context once), plus the CPT and forgetting rows, and the retention
        record (None without forgetting); the stage's wall time and peak memory go to ``stats``. A
        collective under DDP: every rank calls it."""
        rows, self.rows = unique_rows(gather(self.rows)), []
        contexts = list({c["id"]: c for c in gather(self.contexts)}.values())
        self.contexts, retention, cfg = [], None, self.config
        if contexts and not sanity_checking and (cfg.continued_pretraining or cfg.forgetting):
            with self.rollout.whole_weights():  # every rank runs these on the same contexts
                if cfg.continued_pretraining:
                    rows += continued_pretraining(self.rollout, contexts, derive_seed(self.seed, "cpt"))
                if cfg.forgetting:
                    more, retention = forgetting(self.rollout, contexts, derive_seed(self.seed, "forgetting"))
                    rows += more
        span, self.span = self.span or Span().start(), None  # a rank without a step still logs the same keys
        span.stop()
        self.stats = span.stats("")
        return rows, retention
