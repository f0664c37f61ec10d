"""Paging saved tensors to storage through `torch.autograd.graph.saved_tensors_hooks`.

The store is a real file on disk standing in for the device's flash / SD card: `pack` writes a
saved tensor's bytes and returns a handle, so the tensor's RAM can be freed once forward no
longer needs it; `unpack` reads it back for backward. Bytes written are counted for flash wear.
Parameters and buffers are never paged (they live in RAM anyway).
"""

from __future__ import annotations

import os
import tempfile
import weakref
from dataclasses import dataclass

import torch


@dataclass(frozen=True, slots=True)
class _Handle:
    offset: int
    nbytes: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    storage_offset: int
    storage_numel: int
    dtype: torch.dtype


class PagingStore:
    """An append-only file of paged tensors; reset between steps."""

    def __init__(self, directory: "str | os.PathLike | None" = None) -> None:
        fd, self.path = tempfile.mkstemp(prefix="edgetrain-page-", suffix=".bin", dir=directory)
        self._f = os.fdopen(fd, "r+b", buffering=0)
        self._end = 0
        # data_ptr -> (offset, nbytes, weak reference to a tensor on that storage): an address
        # is only trusted while that tensor lives, since a freed storage's address is reused
        self._by_storage: dict[int, tuple[int, int, weakref.ref]] = {}
        self.bytes_written = 0
        self.bytes_read = 0
        self.transfers = 0
        self.keep_ptrs: set[int] = set()

    def reset(self) -> None:
        self._end = 0
        self._by_storage.clear()

    def pack(self, t: torch.Tensor):
        st = t.untyped_storage()
        ptr = st.data_ptr()
        if ptr in self.keep_ptrs or t.device.type != "cpu" or st.nbytes() == 0:
            return t
        known = self._by_storage.get(ptr)
        if known is None or known[2]() is None:  # a live storage saved twice is written once
            raw = torch.empty(0, dtype=torch.uint8).set_(st)  # a byte view, no copy
            n = st.nbytes()
            self._f.seek(self._end)
            self._f.write(raw.numpy().data)
            self._by_storage[ptr] = (self._end, n, weakref.ref(t))
            self._end += n
            self.bytes_written += n
            self.transfers += 1
        off, n, _ = self._by_storage[ptr]
        return _Handle(off, n, tuple(t.shape), tuple(t.stride()), t.storage_offset(),
                       n // t.element_size(), t.dtype)

    def unpack(self, h):
        if isinstance(h, torch.Tensor):
            return h
        flat = torch.empty(h.storage_numel, dtype=h.dtype)  # read straight into the tensor
        self._f.seek(h.offset)
        self._f.readinto(flat.view(torch.uint8).numpy().data)
        self.bytes_read += h.nbytes
        self.transfers += 1
        return flat.as_strided(h.shape, h.stride, h.storage_offset)

    def hooks(self):
        return torch.autograd.graph.saved_tensors_hooks(self.pack, self.unpack)

    def close(self) -> None:
        try:
            self._f.close()
        finally:
            if os.path.exists(self.path):
                os.unlink(self.path)
