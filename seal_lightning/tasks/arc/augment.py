"""Invertible augmentations of ARC tasks and the leave-one-out data of test-time training (TTT).

As in SEAL's few-shot code and Akyürek et al., "The Surprising Effectiveness of Test-Time
Training for Abstract Reasoning": the demonstrations of a task become leave-one-out tasks (each
demonstration in turn is the test pair), and augmented copies of those are added. Augmenting a
task applies the same transform to every input and output grid, so the task's rule carries over.

Every augmentation is invertible: ``invert(apply(g)) == g``. ``invert`` raises ValueError on a
grid that ``apply`` cannot produce (an upscaled prediction whose blocks disagree, a tiled one
whose tiles differ), so a prediction made on an augmented task either maps back or is discarded.
Size-changing augmentations are skipped for a task in which some grid would exceed 30 x 30.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

from .grids import MAX_SIDE, Grid, Pair

Task = tuple[list[Pair], Pair]  # (demonstrations, test pair)

COLOUR_PERMUTATIONS = 2  # seeded colour permutations in the basic group


def rot90(g: Grid) -> Grid:
    """Rotate a quarter turn clockwise."""
    return [list(row) for row in zip(*g[::-1])]


def rot180(g: Grid) -> Grid:
    return [row[::-1] for row in g[::-1]]


def rot270(g: Grid) -> Grid:
    """Rotate a quarter turn anticlockwise."""
    return [list(row) for row in zip(*g)][::-1]


def flip_h(g: Grid) -> Grid:
    """Mirror left <-> right."""
    return [row[::-1] for row in g]


def flip_v(g: Grid) -> Grid:
    """Mirror top <-> bottom."""
    return [list(row) for row in g[::-1]]


def transpose(g: Grid) -> Grid:
    """Mirror in the main diagonal."""
    return [list(row) for row in zip(*g)]


def anti_transpose(g: Grid) -> Grid:
    """Mirror in the anti-diagonal."""
    return rot180(transpose(g))


DIHEDRAL: dict[str, Callable[[Grid], Grid]] = {
    "identity": lambda g: [list(row) for row in g],
    "rot90": rot90,
    "rot180": rot180,
    "rot270": rot270,
    "flip_h": flip_h,
    "flip_v": flip_v,
    "transpose": transpose,
    "anti_transpose": anti_transpose,
}
_DIHEDRAL_INVERSE = {"rot90": "rot270", "rot270": "rot90"}  # the others are their own inverse


class Augmentation(ABC):
    """A grid transform with its inverse."""

    @abstractmethod
    def apply(self, grid: Grid) -> Grid: ...

    @abstractmethod
    def invert(self, grid: Grid) -> Grid: ...

    def fits(self, grid: Grid) -> bool:
        """Whether ``apply(grid)`` stays within 30 x 30."""
        return True


@dataclass(frozen=True)
class Dihedral(Augmentation):
    """A rotation or reflection: one of the eight names in :data:`DIHEDRAL`."""

    transform: str

    def __post_init__(self) -> None:
        if self.transform not in DIHEDRAL:
            raise ValueError(f"unknown transform {self.transform!r}; choose one of {sorted(DIHEDRAL)}")

    def apply(self, grid: Grid) -> Grid:
        return DIHEDRAL[self.transform](grid)

    def invert(self, grid: Grid) -> Grid:
        return DIHEDRAL[_DIHEDRAL_INVERSE.get(self.transform, self.transform)](grid)


@dataclass(frozen=True)
class Recolour(Augmentation):
    """A permutation of the colours: ``mapping[c]`` replaces ``c``; 0 (background) stays 0."""

    mapping: tuple[int, ...]

    def __post_init__(self) -> None:
        if sorted(self.mapping) != list(range(10)) or self.mapping[0] != 0:
            raise ValueError(f"{self.mapping} is not a permutation of 0..9 that keeps 0 fixed")

    @classmethod
    def seeded(cls, rng: random.Random) -> Recolour:
        colours = list(range(1, 10))
        rng.shuffle(colours)
        return cls((0, *colours))

    def apply(self, grid: Grid) -> Grid:
        return [[self.mapping[c] for c in row] for row in grid]

    def invert(self, grid: Grid) -> Grid:
        inverse = [0] * 10
        for c, new in enumerate(self.mapping):
            inverse[new] = c
        return [[inverse[c] for c in row] for row in grid]


@dataclass(frozen=True)
class _Enlarge(Augmentation):
    """An augmentation that makes a grid ``rows`` times taller and ``cols`` times wider."""

    rows: int
    cols: int

    def fits(self, grid: Grid) -> bool:
        return len(grid) * self.rows <= MAX_SIDE and len(grid[0]) * self.cols <= MAX_SIDE


@dataclass(frozen=True)
class Upscale(_Enlarge):
    """Every cell becomes a ``rows`` x ``cols`` block (2 x 2: higher resolution; 2 x 1: taller)."""

    def apply(self, grid: Grid) -> Grid:
        return [[c for c in row for _ in range(self.cols)] for row in grid for _ in range(self.rows)]

    def invert(self, grid: Grid) -> Grid:
        if len(grid) % self.rows or len(grid[0]) % self.cols:
            raise ValueError(f"{len(grid)}x{len(grid[0])} grid is not a {self.rows}x{self.cols} upscale")
        small = [row[:: self.cols] for row in grid[:: self.rows]]
        if self.apply(small) != grid:
            raise ValueError(f"grid is not a {self.rows}x{self.cols} upscale: its blocks are not uniform")
        return small


@dataclass(frozen=True)
class Tile(_Enlarge):
    """The grid repeated ``rows`` times downwards and ``cols`` times across."""

    def apply(self, grid: Grid) -> Grid:
        return [list(row) * self.cols for _ in range(self.rows) for row in grid]

    def invert(self, grid: Grid) -> Grid:
        if len(grid) % self.rows or len(grid[0]) % self.cols:
            raise ValueError(f"{len(grid)}x{len(grid[0])} grid is not a {self.rows}x{self.cols} tiling")
        tile = [row[: len(row) // self.cols] for row in grid[: len(grid) // self.rows]]
        if self.apply(tile) != grid:
            raise ValueError(f"grid is not a {self.rows}x{self.cols} tiling: its tiles differ")
        return tile


@dataclass(frozen=True)
class Chain(Augmentation):
    """``second`` applied after ``first``."""

    first: Augmentation
    second: Augmentation

    def fits(self, grid: Grid) -> bool:
        return self.first.fits(grid) and self.second.fits(self.first.apply(grid))

    def apply(self, grid: Grid) -> Grid:
        return self.second.apply(self.first.apply(grid))

    def invert(self, grid: Grid) -> Grid:
        return self.first.invert(self.second.invert(grid))


def augmentations(use_basic: bool, use_size: bool, use_chain: bool, use_repeat: bool, seed: int) -> list[Augmentation]:
    """The tools of the chosen groups (the four switches of a self-edit).

    basic: the seven non-identity rotations and reflections and :data:`COLOUR_PERMUTATIONS`
    seeded colour permutations; size: 2x2, 2x1 and 1x2 upscaling; chain: each non-identity
    rotation / reflection followed by 2x2 upscaling or by the first colour permutation;
    repeat: 1x2, 2x1 and 2x2 tiling.
    """
    rng = random.Random(seed)
    geometric = [Dihedral(name) for name in DIHEDRAL if name != "identity"]
    recolours = [Recolour.seeded(rng) for _ in range(COLOUR_PERMUTATIONS)]
    tools: list[Augmentation] = []
    if use_basic:
        tools += geometric + recolours
    if use_size:
        tools += [Upscale(2, 2), Upscale(2, 1), Upscale(1, 2)]
    if use_chain:
        tools += [Chain(g, then) for g in geometric for then in (Upscale(2, 2), recolours[0])]
    if use_repeat:
        tools += [Tile(1, 2), Tile(2, 1), Tile(2, 2)]
    return tools


def augment_task(augmentation: Augmentation, task: Task) -> Task | None:
    """``task`` with ``augmentation`` applied to every grid; ``None`` if some grid would not fit."""
    demos, test = task
    grids = [g for pair in [*demos, test] for g in pair]
    if not all(augmentation.fits(g) for g in grids):
        return None
    apply = augmentation.apply
    return [(apply(i), apply(o)) for i, o in demos], (apply(test[0]), apply(test[1]))


def leave_one_out(train_pairs: list[Pair]) -> list[Task]:
    """One task per demonstration: that demonstration is the test pair, the others the examples."""
    if len(train_pairs) < 2:
        raise ValueError(f"leave-one-out needs at least 2 demonstrations, got {len(train_pairs)}")
    pairs = [tuple(pair) for pair in train_pairs]
    return [(pairs[:k] + pairs[k + 1 :], pairs[k]) for k in range(len(pairs))]


def augmented_tasks(
    train_pairs: list[Pair],
    use_basic: bool,
    use_size: bool,
    use_chain: bool,
    use_repeat: bool,
    seed: int,
    max_tasks: int,
) -> list[Task]:
    """Leave-one-out tasks first, then their augmented copies in a seeded order; no duplicates.

    Deterministic per ``seed``; at most ``max_tasks`` tasks (the leave-one-out ones are kept first).
    """
    if max_tasks < 1:
        raise ValueError(f"max_tasks must be >= 1, got {max_tasks}")
    base = leave_one_out(train_pairs)
    tools = augmentations(use_basic, use_size, use_chain, use_repeat, seed)
    extra = [t for tool in tools for task in base if (t := augment_task(tool, task)) is not None]
    random.Random(seed).shuffle(extra)
    tasks, seen = [], set()
    for task in base + extra:
        key = repr(task)
        if key not in seen:
            seen.add(key)
            tasks.append(task)
    return tasks[:max_tasks]
