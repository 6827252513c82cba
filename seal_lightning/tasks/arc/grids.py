"""ARC grids and their text format.

A grid is a rectangular ``list[list[int]]`` of colours 0..9 with 1..30 rows and columns. In text a
grid is one row per line with the digits written side by side (``"012\\n345"``): the SmolLM2
tokenizer splits digits individually and never merges a digit with a neighbour, so every cell is
exactly one token and every row costs one more (the newline). Spaces between cells would double
the length (``" "`` is a token of its own) for nothing.

A few-shot prompt lists the demonstrations as ``input:``/``output:`` blocks separated by a blank
line and ends with the test input and ``output:\\n``; the model continues with the output grid.
"""

from __future__ import annotations

Grid = list[list[int]]
Pair = tuple[Grid, Grid]

MAX_SIDE = 30


class GridParseError(ValueError):
    """Model output that is not a grid; the message says why."""


def validate_grid(grid: object, where: str) -> Grid:
    """Return ``grid`` if it is a valid grid, else raise ValueError naming ``where``."""
    if not isinstance(grid, list) or not grid:
        raise ValueError(f"{where}: a grid must be a non-empty list of rows")
    if len(grid) > MAX_SIDE:
        raise ValueError(f"{where}: {len(grid)} rows, at most {MAX_SIDE} allowed")
    for i, row in enumerate(grid):
        if not isinstance(row, list) or not row:
            raise ValueError(f"{where}: row {i} must be a non-empty list of colours")
        if len(row) != len(grid[0]):
            raise ValueError(f"{where}: row {i} has {len(row)} cells, row 0 has {len(grid[0])} (ragged grid)")
        if len(row) > MAX_SIDE:
            raise ValueError(f"{where}: {len(row)} columns, at most {MAX_SIDE} allowed")
        for j, cell in enumerate(row):
            if type(cell) is not int or not 0 <= cell <= 9:
                raise ValueError(f"{where}: cell ({i}, {j}) is {cell!r}, expected a colour 0..9")
    return grid


def grid_to_text(grid: Grid) -> str:
    """``[[0, 1], [2, 3]]`` -> ``"01\\n23"``: one digit token per cell, one newline per row."""
    return "\n".join("".join(str(cell) for cell in row) for row in grid)


def parse_grid(text: str) -> Grid:
    """Read a grid from model output: the lines up to the first blank line (or the end).

    Surrounding whitespace and trailing spaces on a line are ignored; anything else that is not a
    digit (letters, separators, spaces inside a row), ragged rows, an empty answer or a grid over
    30 x 30 raise :class:`GridParseError`. Nothing is evaluated.
    """
    rows = []
    for line in text.strip().splitlines():
        line = line.strip()
        if not line:
            break
        bad = next((ch for ch in line if ch not in "0123456789"), None)
        if bad is not None:
            raise GridParseError(f"row {len(rows)} {line!r} contains {bad!r}; rows must be digits 0-9 only")
        rows.append([int(ch) for ch in line])
    if not rows:
        raise GridParseError("no grid: the output is empty")
    try:
        return validate_grid(rows, "output")
    except ValueError as err:
        raise GridParseError(str(err)) from None


def format_pair(input_grid: Grid, output_grid: Grid) -> str:
    """One demonstration block: ``input:\\n<grid>\\noutput:\\n<grid>\\n``."""
    return f"input:\n{grid_to_text(input_grid)}\noutput:\n{grid_to_text(output_grid)}\n"


def format_task_prompt(train_pairs: list[Pair], test_input: Grid) -> str:
    """The demonstrations, a blank line after each, then the test input and ``output:\\n``."""
    demos = "".join(format_pair(i, o) + "\n" for i, o in train_pairs)
    return f"{demos}input:\n{grid_to_text(test_input)}\noutput:\n"


def format_example(train_pairs: list[Pair], test_input: Grid, test_output: Grid) -> tuple[str, str]:
    """A training sequence ``(prompt, completion)``; the completion is the output grid and a newline."""
    return format_task_prompt(train_pairs, test_input), grid_to_text(test_output) + "\n"
