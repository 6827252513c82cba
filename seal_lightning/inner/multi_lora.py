"""K LoRA adapters in one layer: each token goes through the adapter that owns it.

``inject`` wraps the targeted ``nn.Linear`` layers of a frozen model in :class:`MultiLoRALinear`;
``routed`` says, for one forward, which adapter owns each row (or packed token).
"""

from __future__ import annotations

import contextlib
import heapq
from collections.abc import Iterator

import torch
from torch import nn


class Routing:
    """Which adapter each token belongs to, and where it sits in a ``(K, T, ·)`` per-adapter grid.

    ``owner`` names the adapter of each row of the input, in any order. A packed training batch
    is routed token by token: ``owner`` then has one entry per token (a row of N tokens counts as
    N rows of one token). The grid spans only the adapters ``lo..hi-1`` that own rows, so a batch
    of a few adapters does not pay for all K. An owner of -1 (a packed bin's padding, whose output
    nothing reads) takes a free slot of whichever adapter has fewest rows, so padding does not
    widen the grid: routed to one adapter, a bin's padding made every adapter's part of the grid
    that long (3x the real tokens, measured in docs/performance.md).
    """

    def __init__(self, owner: torch.Tensor) -> None:
        owner = _fill_free(owner)
        self.lo, self.hi = int(owner.min()), int(owner.max()) + 1
        self.owner = owner - self.lo
        counts = torch.bincount(self.owner, minlength=self.hi - self.lo)
        order = torch.argsort(self.owner, stable=True)
        starts = counts.cumsum(0) - counts
        self.rank = torch.empty_like(self.owner)  # row's place among its adapter's rows
        self.rank[order] = torch.arange(len(owner), device=owner.device) - starts[self.owner[order]]
        self.rows = int(counts.max())
        self._slots: dict[int, tuple[torch.Tensor, int]] = {}

    def slots(self, tokens: int) -> tuple[torch.Tensor, int]:
        """Flat index into the ``((hi - lo) * T, ·)`` grid of each of ``tokens`` tokens, and T."""
        per_row = tokens // len(self.owner)
        if per_row not in self._slots:
            t = torch.arange(per_row, device=self.owner.device)
            width = self.rows * per_row
            index = (self.owner[:, None] * width + self.rank[:, None] * per_row + t).reshape(-1)
            self._slots[per_row] = index, width
        return self._slots[per_row]


def _fill_free(owner: torch.Tensor) -> torch.Tensor:
    """``owner`` with each -1 given to the adapter (of those the grid spans) that has the fewest rows so
    far, so every adapter's row count stays at most the larger of its own and the mean."""
    free = owner < 0
    n_free = int(free.sum())
    if n_free == 0:
        return owner
    owned = owner[~free]
    if len(owned) == 0:
        return torch.zeros_like(owner)
    lo = int(owned.min())
    counts = torch.bincount(owned - lo).tolist()
    heap = [(c, k) for k, c in enumerate(counts)]
    heapq.heapify(heap)
    given = []
    for _ in range(n_free):
        c, k = heapq.heappop(heap)
        given.append(k + lo)
        heapq.heappush(heap, (c + 1, k))
    return owner.masked_scatter(free, torch.tensor(given, dtype=owner.dtype, device=owner.device))


class MultiLoRALinear(nn.Module):
    """``base(x) + scale * B[k] A[k] x`` where k is the adapter that owns x's token, computed in x's dtype.

    ``A`` is ``(K, r, in)`` and ``B`` is ``(K, out, r)``. The routed tokens are scattered into a
    ``(K, T, in)`` grid and both LoRA products are one ``bmm`` each, whatever K: the number of
    operations does not grow with the number of adapters.
    """

    def __init__(self, base: nn.Linear, k: int, r: int, scale: float, dropout: float) -> None:
        super().__init__()
        self.base, self.scale = base, scale
        device = base.weight.device
        self.A = nn.Parameter(torch.zeros(k, r, base.in_features, device=device, dtype=torch.float32))
        self.B = nn.Parameter(torch.zeros(k, base.out_features, r, device=device, dtype=torch.float32))
        self.dropout = nn.Dropout(dropout)
        self.routing: Routing | None = None  # None = base only
        self._cast: tuple | None = None  # (key, A, B) of the last routing without autograd

    def resize(self, k: int) -> None:
        """Hold ``k`` adapters (all zero)."""
        self.A = nn.Parameter(self.A.new_zeros(k, *self.A.shape[1:]))
        self.B = nn.Parameter(self.B.new_zeros(k, *self.B.shape[1:]))

    def _factors(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """The routed adapters' A and B in ``dtype``. Without autograd (answering) the cast copies are
        kept while the adapters are unchanged: a decoding step would otherwise cast all adapters'
        weights, as many as the base model's for 12 adapters, to produce one token per row."""
        lo, hi = self.routing.lo, self.routing.hi
        if torch.is_grad_enabled():
            return self.A[lo:hi].to(dtype), self.B[lo:hi].to(dtype)
        key = (lo, hi, dtype, id(self.A), self.A._version, self.B._version)
        if self._cast is None or self._cast[0] != key:
            self._cast = key, self.A[lo:hi].detach().to(dtype), self.B[lo:hi].detach().to(dtype)
        return self._cast[1], self._cast[2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        if self.routing is None:
            return out
        flat = self.dropout(x).reshape(-1, x.shape[-1])
        index, width = self.routing.slots(len(flat))
        # the adapters stay fp32; their products run in the activations' dtype, as under autocast
        # (bf16: half the bmm time and no casts of the activations; fp32: unchanged)
        A, B = self._factors(flat.dtype)
        grid = flat.new_zeros(len(A) * width, flat.shape[1]).index_copy(0, index, flat)
        grid = torch.bmm(torch.bmm(grid.view(len(A), width, -1), A.transpose(1, 2)), B.transpose(1, 2))
        delta = grid.view(-1, grid.shape[-1]).index_select(0, index).view(out.shape)
        return out + delta * self.scale


def inject(
    model: nn.Module, targets: str | list[str], k: int, r: int, scale: float, dropout: float
) -> dict[str, MultiLoRALinear]:
    """Wrap the targeted linear layers of ``model`` in place (``all-linear``: all but the output head)."""
    head = model.get_output_embeddings()
    layers = {}
    for name, module in list(model.named_modules()):
        if not isinstance(module, nn.Linear) or module is head:
            continue
        if targets != "all-linear" and name.rsplit(".", 1)[-1] not in targets:
            continue
        parent_name, _, child = name.rpartition(".")
        wrapped = MultiLoRALinear(module, k, r, scale, dropout)
        setattr(model.get_submodule(parent_name) if parent_name else model, child, wrapped)
        layers[name] = wrapped
    return layers


@contextlib.contextmanager
def routed(layers: dict[str, MultiLoRALinear], owner: torch.Tensor) -> Iterator[None]:
    """Route input row i (or packed token i) to adapter ``owner[i]``."""
    routing = Routing(owner)
    for layer in layers.values():
        layer.routing = routing
    try:
        yield
    finally:
        for layer in layers.values():
            layer.routing, layer._cast = None, None
