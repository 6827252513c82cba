"""A seeded procedural mini-ARC: small tasks whose rules a small model can pick up by test-time training.

Each task follows one rule family of :data:`RULES` with arguments drawn per task (which colours,
which tiling). ``RULES[record["rule"]](grid, **record["args"])`` maps every input of a record to
its output. Every grid, input or output, is ``min_size``..``max_size`` on each side, and no
output equals its input, so a demonstration always shows the rule at work.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from .augment import Tile, flip_h, flip_v, rot90, rot180, transpose
from .grids import MAX_SIDE, Grid


def colour_map(grid: Grid, mapping: list[int]) -> Grid:
    """Every colour ``c`` becomes ``mapping[c]``."""
    return [[mapping[c] for c in row] for row in grid]


def recolour(grid: Grid, source: int, target: int) -> Grid:
    """Every cell of colour ``source`` becomes ``target``."""
    return [[target if c == source else c for c in row] for row in grid]


def gravity(grid: Grid) -> Grid:
    """Non-zero cells fall to the bottom of their column, keeping their order."""
    columns = []
    for column in zip(*grid):
        cells = [c for c in column if c]
        columns.append([0] * (len(column) - len(cells)) + cells)
    return [list(row) for row in zip(*columns)]


def tile(grid: Grid, rows: int, cols: int) -> Grid:
    """The grid repeated ``rows`` times downwards and ``cols`` times across."""
    return Tile(rows, cols).apply(grid)


def fill_background(grid: Grid, colour: int) -> Grid:
    """Background cells (0) take ``colour``."""
    return recolour(grid, 0, colour)


def border(grid: Grid, colour: int) -> Grid:
    """The outermost ring of cells takes ``colour``."""
    h, w = len(grid), len(grid[0])
    framed = [[colour] * w for _ in range(h)]
    for i in range(1, h - 1):
        framed[i][1 : w - 1] = grid[i][1 : w - 1]
    return framed


RULES: dict[str, Callable[..., Grid]] = {
    "flip_h": flip_h,
    "flip_v": flip_v,
    "rot90": rot90,
    "rot180": rot180,
    "transpose": transpose,
    "colour_map": colour_map,
    "recolour": recolour,
    "gravity": gravity,
    "tile": tile,
    "fill_background": fill_background,
    "border": border,
}


def _args(rule: str, rng: random.Random, palette: list[int], spare: int) -> dict:
    """Arguments of ``rule`` for one task; ``palette`` colours fill the inputs, ``spare`` is unused."""
    if rule == "colour_map":  # the palette colours swap cyclically
        mapping = list(range(10))
        for a, b in zip(palette, palette[1:] + palette[:1]):
            mapping[a] = b
        return {"mapping": mapping}
    if rule == "recolour":
        return {"source": palette[0], "target": spare}
    if rule == "tile":
        rows, cols = rng.choice([(1, 2), (2, 1), (2, 2)])
        return {"rows": rows, "cols": cols}
    if rule in ("fill_background", "border"):
        return {"colour": spare}
    return {}


def _input(rng: random.Random, args: dict, palette: list[int], min_size: int, max_size: int) -> Grid:
    """A random input grid sized so that the output also stays within the bounds."""
    h = rng.randint(min_size, max_size // args.get("rows", 1))
    w = rng.randint(min_size, max_size // args.get("cols", 1))
    density = rng.uniform(0.25, 0.6)
    return [[rng.choice(palette) if rng.random() < density else 0 for _ in range(w)] for _ in range(h)]


def generate_tasks(
    n: int, seed: int, min_size: int = 3, max_size: int = 8, rules: list[str] | None = None
) -> list[dict]:
    """``n`` tasks, rule families in turn (those of ``rules``, default all); deterministic per
    ``(n, seed, rules)``.

    Records: ``{"id", "rule", "args", "train": [(input, output), ...] (3-5 pairs), "test": (input, output)}``.
    """
    if not 2 <= min_size <= max_size // 2 or max_size > MAX_SIDE:
        raise ValueError(f"need 2 <= min_size <= max_size / 2 and max_size <= {MAX_SIDE}, got {min_size}, {max_size}")
    unknown = sorted(set(rules or []) - set(RULES))
    if unknown or rules == []:
        raise ValueError(f"unknown rule {unknown[0] if unknown else '(none given)'!r}; choose from {', '.join(RULES)}")
    rng = random.Random(seed)
    families = rules or list(RULES)
    records = []
    for index in range(n):
        rule = families[index % len(families)]
        *palette, spare = rng.sample(range(1, 10), 4)
        args = _args(rule, rng, palette, spare)
        count = rng.randint(3, 5) + 1  # the demonstrations and the test pair
        pairs: list[tuple[Grid, Grid]] = []
        for _ in range(1000):  # non-trivial inputs come quickly; the bound only guards against a bug
            grid = _input(rng, args, palette, min_size, max_size)
            output = RULES[rule](grid, **args)
            if output != grid and all(grid != seen for seen, _ in pairs):
                pairs.append((grid, output))
                if len(pairs) == count:
                    break
        else:
            raise RuntimeError(f"rule {rule!r}: could not draw enough non-trivial inputs")
        record_id = f"generated-{seed}-{index}"
        records.append({"id": record_id, "rule": rule, "args": args, "train": pairs[:-1], "test": pairs[-1]})
    return records
