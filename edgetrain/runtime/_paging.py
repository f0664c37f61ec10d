"""Paging saved tensors to storage through `torch.autograd.graph.saved_tensors_hooks`.

The store is a real file on disk standing in for the device's flash / SD card: `pack` writes a
saved tensor's bytes and returns a handle, so the tensor's RAM can be freed once forward no
longer needs it; `unpack` reads it back for backward. Bytes written are counted for flash wear.
Storages that stay in RAM for the whole step anyway are never paged (`resident`): parameters and
buffers, and the step's input batch and targets (a micro-batch is a view of the batch, so paging
its storage would write the whole batch and read a second copy of it back into RAM: the cost model
counts the batch as live throughout, see NOTE [ What counts toward peak memory ]).

NOTE [ A paged storage is written once and read back once ]
    Autograd often saves several tensors on one storage (attention saves q, k and v, views of
    one projection; a GRU cell saves chunks of its gate buffer). `pack` writes a storage once
    and hands out a handle per saved view; `unpack` reads a storage back once and serves every
    view of it from that copy while any of them lives (a C++ weak reference to the read-back
    storage, as torch.multiprocessing's storage cache keeps), so RAM holds one copy, as the
    cost model counts. A storage may change between two saves (eager GRU cells update their
    gate buffer in place, `unsafe_chunk` views with no shared version counter): its bytes'
    CRC-32 is kept with the written copy, and a save whose bytes differ writes a new copy, so
    backward always sees what forward saved.

NOTE [ Paging files ]
    The file is `edgetrain-page-<pid>-*.bin` in the paging folder (the system's temp folder by
    default). On POSIX it is unlinked as soon as it is opened: the open descriptor keeps it
    usable and the OS frees it when the process ends however it ends, `kill -9` included, so no
    paging file is ever left behind. Where an open file cannot be unlinked (Windows) it is
    removed on close, and every new store removes the leftovers of dead processes (their PID in
    the name, or none: files of older versions) from its folder.
"""

from __future__ import annotations

import os
import re
import tempfile
import weakref
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.multiprocessing.reductions import StorageWeakRef

from edgetrain.runtime._lock import pid_alive


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
    """An append-only file of paged tensors, rewound at every micro-batch (`reset`)."""

    def __init__(self, directory: "str | os.PathLike | None" = None) -> None:
        remove_stale_paging_files(directory)
        fd, self.path = tempfile.mkstemp(
            prefix=f"{PAGE_PREFIX}{os.getpid()}-", suffix=".bin", dir=directory
        )
        self._f = os.fdopen(fd, "r+b", buffering=0)
        if os.name == "posix":  # NOTE [ Paging files ]
            os.unlink(self.path)
        self._end = 0
        # data_ptr -> (offset, nbytes, weak reference to a tensor on that storage, CRC-32 of the
        # bytes written): an address is only trusted while that tensor lives, since a freed
        # storage's address is reused (NOTE [ A paged storage is written once and read back
        # once ])
        self._by_storage: dict[int, tuple[int, int, weakref.ref, int]] = {}
        self._read_back: dict[int, StorageWeakRef] = {}  # file offset -> storage read back
        self.bytes_written = 0
        self.bytes_read = 0
        self.transfers = 0
        self._resident: set[int] = set()  # data_ptrs of storages RAM holds all along
        self._step_resident: set[int] = set()  # ... and of this step's batch

    def keep_resident(self, tensors) -> None:
        """Never page these tensors' storages (parameters, buffers): they stay in RAM anyway."""
        self._resident |= _ptrs(tensors)

    def begin_step(self, batch) -> None:
        """A new optimizer step over `batch` (inputs, targets): they stay in RAM all step, so
        their storages are not paged; the previous step's batch addresses are forgotten."""
        self._step_resident = _ptrs(batch)
        self.reset()

    def reset(self) -> None:
        """A new micro-batch: rewind the file (the previous backward has read everything)."""
        self._end = 0
        self._by_storage.clear()
        self._read_back.clear()

    def pack(self, t: torch.Tensor):
        st = t.untyped_storage()
        ptr = st.data_ptr()
        if (
            ptr in self._resident
            or ptr in self._step_resident
            or t.device.type != "cpu"
            or st.nbytes() == 0
        ):
            return t
        raw = torch.empty(0, dtype=torch.uint8).set_(st).numpy().data  # a byte view, no copy
        crc = zlib.crc32(raw)
        known = self._by_storage.get(ptr)
        if known is None or known[2]() is None or known[3] != crc:
            n = st.nbytes()
            self._f.seek(self._end)
            self._f.write(raw)
            self._by_storage[ptr] = (self._end, n, weakref.ref(t), crc)
            self._end += n
            self.bytes_written += n
            self.transfers += 1
        off, n, _, _ = self._by_storage[ptr]
        return _Handle(
            off,
            n,
            tuple(t.shape),
            tuple(t.stride()),
            t.storage_offset(),
            n // t.element_size(),
            t.dtype,
        )

    def unpack(self, h):
        if isinstance(h, torch.Tensor):
            return h
        ref = self._read_back.get(h.offset)
        st = None
        if ref is not None and not ref.expired():
            st = torch.UntypedStorage._new_with_weak_ptr(ref.cdata)
        if st is not None:  # another view of this storage is live: share its copy
            flat = torch.empty(0, dtype=h.dtype).set_(st, 0, (h.storage_numel,), (1,))
        else:
            flat = torch.empty(h.storage_numel, dtype=h.dtype)  # read straight into the tensor
            self._f.seek(h.offset)
            self._f.readinto(flat.view(torch.uint8).numpy().data)
            self.bytes_read += h.nbytes
            self.transfers += 1
            self._read_back[h.offset] = StorageWeakRef(flat.untyped_storage())
        return flat.as_strided(h.shape, h.stride, h.storage_offset)

    def hooks(self):
        return torch.autograd.graph.saved_tensors_hooks(self.pack, self.unpack)

    def close(self) -> None:
        try:
            self._f.close()
        finally:
            if os.path.exists(self.path):
                os.unlink(self.path)


PAGE_PREFIX = "edgetrain-page-"
_PAGE_NAME = re.compile(re.escape(PAGE_PREFIX) + r"(?:(\d+)-)?.*\.bin")


def remove_stale_paging_files(directory: "str | os.PathLike | None" = None) -> list[Path]:
    """Delete paging files of processes no longer running (NOTE [ Paging files ])."""
    folder = Path(directory) if directory is not None else Path(tempfile.gettempdir())
    gone = []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return gone
    for p in entries:
        m = _PAGE_NAME.fullmatch(p.name)
        if m is None or (m.group(1) is not None and pid_alive(int(m.group(1)))):
            continue
        try:
            p.unlink()
            gone.append(p)
        except OSError:
            pass
    return gone


def _ptrs(tensors) -> set[int]:
    return {
        t.untyped_storage().data_ptr()
        for t in tensors
        if isinstance(t, torch.Tensor) and t.device.type == "cpu"
    }
