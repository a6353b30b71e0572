"""A preallocated key/value cache with one slot per batch row, for continuous batching.

Hugging Face's `DynamicCache` grows every layer's keys and values by `torch.cat` at every step (a full copy of
the cache per token) and ties all rows to one shared history. Here each layer owns a buffer of shape
`[slots, kv_heads, capacity, head_dim]`. All rows share one column window `[start, end)`: a step writes column
`end` for every live row and attends over the window as a view, with no copy. Row `r` owns the columns from
`row_start[r]` to `end`, so a row that finished can be replaced by a new prompt in its slot while the others
keep decoding; the engine masks the columns a row does not own. The buffer is moved only when the window
reaches its end (about once per `max_new_tokens` steps).

It plugs into the model through the standard `Cache` API (`update` per layer), so any causal LM that uses
`past_key_values` and accepts a 4D attention mask and explicit `position_ids` decodes with it unchanged.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, CacheLayerMixin


class _Window:
    """Columns shared by every layer: `[start, end)` is live; the next step writes column `end`."""

    def __init__(self) -> None:
        self.start = 0
        self.end = 0


class SlotLayer(CacheLayerMixin):
    """One layer's buffer; `update` writes the step's new column and returns the live window (a view)."""

    def __init__(self, window: _Window) -> None:
        super().__init__()
        self.window = window

    def allocate(self, slots: int, heads: int, capacity: int, head_dim: int, dtype: torch.dtype,
                 device: torch.device) -> None:
        self.keys = torch.zeros(slots, heads, capacity, head_dim, dtype=dtype, device=device)
        self.values = torch.zeros_like(self.keys)
        self.is_initialized = True

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        raise RuntimeError("SlotLayer buffers are allocated by SlotCache.allocate before the first step")

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
               ) -> tuple[torch.Tensor, torch.Tensor]:
        rows, width = key_states.shape[0], key_states.shape[2]
        start, end = self.window.start, self.window.end
        self.keys[:rows, :, end:end + width] = key_states
        self.values[:rows, :, end:end + width] = value_states
        return self.keys[:rows, :, start:end + width], self.values[:rows, :, start:end + width]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.get_seq_length() + query_length, 0

    def get_seq_length(self) -> int:
        return self.window.end - self.window.start

    def get_max_length(self) -> int:
        return -1


class SlotCache(Cache):
    """All layers' slot buffers plus the operations continuous batching needs: place a prefilled prompt in a
    slot, move a row to another slot, and keep room in the buffer."""

    def __init__(self, num_layers: int) -> None:
        self.window = _Window()
        super().__init__(layers=[SlotLayer(self.window) for _ in range(num_layers)])

    @property
    def capacity(self) -> int:
        return self.layers[0].keys.shape[2] if self.layers[0].is_initialized else 0

    def allocate_like(self, prefill: Cache, slots: int, capacity: int) -> None:
        """Allocate buffers shaped like a prefill cache's layers (heads, head_dim, dtype, device)."""
        for layer, source in zip(self.layers, prefill.layers):
            _, heads, _, head_dim = source.keys.shape
            layer.allocate(slots, heads, capacity, head_dim, source.keys.dtype, source.keys.device)

    def place(self, slot: int, prefill: Cache, row: int, length: int) -> None:
        """Copy the last `length` columns of row `row` of a (left-padded) prefill cache into `slot`, ending
        just before column `window.end`, where the row's next token will be written."""
        end = self.window.end
        for layer, source in zip(self.layers, prefill.layers):
            layer.keys[slot, :, end - length:end] = source.keys[row, :, -length:]
            layer.values[slot, :, end - length:end] = source.values[row, :, -length:]

    def move_slot(self, src: int, dst: int) -> None:
        start, end = self.window.start, self.window.end
        for layer in self.layers:
            layer.keys[dst, :, start:end] = layer.keys[src, :, start:end]
            layer.values[dst, :, start:end] = layer.values[src, :, start:end]

    def make_room(self, left: int, right: int) -> int:
        """Ensure `left` columns exist before `window.end` and `right` columns from it; move (and grow) the
        live window if not. Returns the shift applied to column indices (add it to stored row starts)."""
        start, end, capacity = self.window.start, self.window.end, self.capacity
        if end - left >= 0 and end + right <= capacity:
            return 0
        live = end - start
        new_end = max(live, left)
        needed = new_end + right
        new_capacity = capacity if 3 * needed <= 2 * capacity else 2 * needed  # keep moves rare
        for layer in self.layers:
            for name in ("keys", "values"):
                old = getattr(layer, name)
                window = old[:, :, start:end].clone()
                if new_capacity != capacity:
                    shape = list(old.shape)
                    shape[2] = new_capacity
                    setattr(layer, name, old.new_zeros(shape))
                getattr(layer, name)[:, :, new_end - live:new_end] = window
        shift = new_end - end
        self.window.start, self.window.end = start + shift, new_end
        return shift
