"""A second progress bar under the epoch's: the batch's finished inner updates."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import lightning as L
from lightning.pytorch.callbacks import RichProgressBar
from tqdm import tqdm


@contextlib.contextmanager
def inner_progress(trainer: L.Trainer, total: int) -> Iterator[Callable[[int], None] | None]:
    """Yields the function to call with each number of newly finished inner updates (Rich or tqdm,
    rank 0), or None when the trainer shows no progress bar."""
    bar = trainer.progress_bar_callback
    if bar is None or not trainer.is_global_zero:
        yield None
        return
    if isinstance(bar, RichProgressBar) and bar.progress is not None:  # a second line under the epoch's bar
        task = bar.progress.add_task("inner updates", total=total)
        advance, close = (
            lambda n: bar.progress.update(task, advance=n, refresh=True),
            lambda: bar.progress.remove_task(task),
        )
    else:
        # every update is drawn (tqdm skips draws within 0.1 s or its adaptive miniters, so the last could go unseen)
        line = tqdm(
            total=total,
            desc="inner updates",
            unit="self-edit",
            leave=False,
            dynamic_ncols=True,
            mininterval=0,
            miniters=1,
        )
        advance, close = line.update, line.close
    try:
        yield advance
    finally:
        close()
