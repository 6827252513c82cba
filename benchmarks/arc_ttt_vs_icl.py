"""ICL vs leave-one-out test-time training on generated mini-ARC tasks, side by side in one run.

    python benchmarks/arc_ttt_vs_icl.py [--tasks SPEC] [--lr 1e-3] [--epochs 5] [--strategy ...] [--basic]

Prints the tasks each solves and the TTT losses. SmolLM2-135M on 2 CPU cores, leave-one-out tasks
(no augmentation), loss on output grids, lr 1e-3, 5 epochs (the defaults), grids up to 4x4:

    --tasks                                                        ICL    TTT     time
    builtin:generated:6:1:4:recolour (default)                     1/6    2/6    178 s
      the same, --lr 3e-3                                          1/6    2/6    190 s
    builtin:generated:6:1:4:recolour,flip_v --lr 3e-3              1/6    1/6    172 s
    builtin:generated:12:1:4:recolour,fill_background,colour_map,flip_v
                                                                   1/12   2/12   386 s
    builtin:generated:5:1:4 (flips, rotations, transpose) --lr 3e-3  0/5    0/5    167 s

TTT never did worse than ICL and its misses are mostly one or two cells off. On another 12-task mix
of those four families (ICL 1/12, TTT 4/12 with the defaults), loss on all tokens or basic
augmentations (8 tasks, 3 epochs) solved 1/12 each.
"""

import argparse
import copy
import time

from seal_lightning.inner import InnerConfig
from seal_lightning.inner.batched import BatchedLoRA
from seal_lightning.lm.models import load_model
from seal_lightning.tasks.arc import ArcTask
from seal_lightning.tasks.arc.recipe import STRATEGIES, ArcRecipe
from seal_lightning.tasks.arc.sources import load_arc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default="builtin:generated:6:1:4:recolour")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--strategy", choices=STRATEGIES, default="train_using_output_tokens")
    parser.add_argument("--basic", action="store_true", help="add the basic augmentations (up to 12 tasks)")
    args = parser.parse_args()
    model, tok = load_model("smollm2-135m")
    task, tasks = ArcTask(max_tasks=12), load_arc(args.tasks)
    recipe = ArcRecipe(args.basic, False, False, False, args.strategy, args.lr, args.epochs).to_json()
    engine = BatchedLoRA(
        InnerConfig(
            r=32, alpha=64, batch_size=2, answer_tokens=40, answer_stop="\n\n", max_length=1024, max_adapters=len(tasks)
        )
    )
    jobs = [task.inner_job(t, recipe, seed=i) for i, t in enumerate(tasks)]
    start = time.perf_counter()
    icl = [
        task.grade(t, [a])["solved"] for t, a in zip(tasks, engine.answer(model, tok, [j.questions[0] for j in jobs]))
    ]
    results = engine.run(copy.deepcopy(model).requires_grad_(False), tok, jobs)
    ttt = [task.grade(t, r.answers)["solved"] for t, r in zip(tasks, results)]
    print(f"recipe {recipe}")
    print(f"rules  {[t['rule'] for t in tasks]}")
    print(f"icl    {icl}  solved {sum(icl):.0f}/{len(tasks)}")
    print(f"ttt    {ttt}  solved {sum(ttt):.0f}/{len(tasks)}  losses {[round(r.loss, 3) for r in results]}")
    print(f"{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
