"""The loss history of a checkpointed run: an append-only, rotated log beside the checkpoint.

NOTE [ Loss log ]
    One text record per optimizer step, `STEP LOSS CRC32\\n` (the loss as Python's `repr`, which
    reads back bit-identically; the CRC over `STEP LOSS`), at most `RECORD_MAX_BYTES`. Records
    are appended to `losses.log` and fsynced BEFORE the checkpoint that covers them is
    committed, so the log always reaches the committed step and may run ahead of it after a
    crash; `read(upto_step)` trims the records past the commit (and a torn last line). When
    `losses.log` would exceed `segment_bytes` it is renamed to `losses.log.1` (older segments
    shift to `.2`, ...; the oldest beyond `segments_kept` is deleted), so the log takes at most
    about (segments_kept + 1) * segment_bytes on storage whatever the run's length, and no
    save rewrites the history. The retained records are consecutive steps ending at the
    commit; older ones are gone by design (the run's result says from which step its losses
    start).
"""

from __future__ import annotations

import math
import os
import re
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

from edgetrain.errors import CheckpointCorruptError
from edgetrain.storage import fsync_dir

LOG_NAME = "losses.log"
LOG_SEGMENT_BYTES = 1 << 20
LOG_SEGMENTS_KEPT = 3
RECORD_MAX_BYTES = 64
_MAX_STEP = (1 << 63) - 1
_RECORD = re.compile(rb"(0|[1-9][0-9]{0,18}) (\S{1,32}) ([0-9a-f]{8})")


@dataclass(frozen=True, slots=True)
class LossRecord:
    step: int  # the optimizer step this loss was computed at (1 = the first)
    loss: float


def format_record(step: int, loss: float) -> bytes:
    if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= _MAX_STEP:
        raise ValueError(f"step {step!r} is not an integer in [0, 2**63)")
    body = f"{step} {float(loss)!r}".encode()
    line = body + b" %08x\n" % zlib.crc32(body)
    assert len(line) <= RECORD_MAX_BYTES, line
    return line


def parse_record(line: bytes) -> LossRecord | str:
    """The record on one line (without its newline), or why it is not one."""
    m = _RECORD.fullmatch(line)
    if m is None:
        return f"not a `STEP LOSS CRC32` record: {line[:RECORD_MAX_BYTES]!r}"
    body = m.group(1) + b" " + m.group(2)
    if int(m.group(3), 16) != zlib.crc32(body):
        return "CRC32 mismatch (the record was changed after it was written)"
    try:
        loss = float(m.group(2))
    except ValueError:
        return f"loss {m.group(2)!r} is not a number"
    if not math.isnan(loss) and repr(loss).encode() != m.group(2):
        return f"loss {m.group(2)!r} is not written as edgetrain writes it"
    return LossRecord(int(m.group(1)), loss)


@dataclass(frozen=True, slots=True)
class _Position:
    segment: Path
    end_offset: int  # the byte just after the record


class LossLog:
    """NOTE [ Loss log ]."""

    def __init__(
        self,
        directory: "str | os.PathLike",
        *,
        segment_bytes: int = LOG_SEGMENT_BYTES,
        segments_kept: int = LOG_SEGMENTS_KEPT,
    ) -> None:
        self.directory = Path(directory)
        self.segment_bytes = max(int(segment_bytes), RECORD_MAX_BYTES)
        self.segments_kept = max(int(segments_kept), 0)

    @property
    def current(self) -> Path:
        return self.directory / LOG_NAME

    def segments(self) -> list[Path]:
        """The log's files, oldest first (`losses.log.N`, ..., `losses.log.1`, `losses.log`)."""
        rotated = []
        for p in self.directory.glob(LOG_NAME + ".*"):
            suffix = p.name[len(LOG_NAME) + 1 :]
            if suffix.isdigit() and suffix == str(int(suffix)) and int(suffix) > 0:
                rotated.append((int(suffix), p))
        out = [p for _, p in sorted(rotated, reverse=True)]
        return out + [self.current] if self.current.exists() else out

    def clear(self) -> None:
        """Remove every segment (a fresh run: nothing in the log is committed)."""
        for p in self.segments():
            p.unlink(missing_ok=True)
        fsync_dir(self.directory)

    # -- appending ----------------------------------------------------------------------------
    def append(self, records: "list[LossRecord] | list[tuple[int, float]]") -> None:
        """Append and fsync; rotates whenever the current segment would pass its size limit."""
        lines = [
            format_record(*r) if isinstance(r, tuple) else format_record(r.step, r.loss)
            for r in records
        ]
        if not lines:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        while lines:
            size = self.current.stat().st_size if self.current.exists() else 0
            if size and size + len(lines[0]) > self.segment_bytes:
                self._rotate()
                size = 0
            room, take = self.segment_bytes - size, 0
            while take < len(lines) and (take == 0 or room >= len(lines[take])):
                room -= len(lines[take])
                take += 1
            created = size == 0 and not self.current.exists()
            with open(self.current, "ab") as f:
                f.write(b"".join(lines[:take]))
                f.flush()
                os.fsync(f.fileno())
            if created:
                fsync_dir(self.directory)
            lines = lines[take:]

    def _rotate(self) -> None:
        rotated = [p for p in self.segments() if p != self.current]
        for p in rotated:  # oldest first: beyond the kept count, delete; else shift up by one
            n = int(p.name[len(LOG_NAME) + 1 :])
            if n >= self.segments_kept:
                p.unlink(missing_ok=True)
            else:
                os.replace(p, self.directory / f"{LOG_NAME}.{n + 1}")
        if self.segments_kept:
            os.replace(self.current, self.directory / f"{LOG_NAME}.1")
        else:
            self.current.unlink()
        fsync_dir(self.directory)

    # -- reading back -------------------------------------------------------------------------
    def read(self, upto_step: int) -> list[LossRecord]:
        """The retained records up to the committed step `upto_step`, which must be the last
        of them; records past it (written before a crash, never committed) are removed from
        the files. Raises `CheckpointCorruptError` if the log does not reach `upto_step`."""
        records: list[LossRecord] = []
        positions: list[_Position] = []
        fault = None
        for seg in self.segments():
            fault = self._scan(seg, records, positions)
            if fault:
                break
        covered = [i for i, r in enumerate(records) if r.step <= upto_step]
        if covered and records[covered[-1]].step == upto_step:
            self._trim_after(positions[covered[-1]])
            return records[: covered[-1] + 1]
        if records and not covered and fault is None and records[0].step > upto_step:
            # every retained record is past the commit (one save outran the rotation)
            self.clear()
            return []
        if not records and fault is None:
            if upto_step:
                warnings.warn(
                    f"no loss log in {self.directory}: resuming at step {upto_step} without "
                    "the loss history",
                    RuntimeWarning,
                    stacklevel=3,
                )
            self.clear()
            return []
        last = records[-1].step if records else None
        where = fault or f"{self.current}: the log ends at step {last}"
        raise CheckpointCorruptError(
            f"loss log {where}, but the checkpoint is at step {upto_step}: the log lost "
            f"records the checkpoint covers. The weights are intact: delete "
            f"{self.directory / LOG_NAME}* to resume without the loss history"
        )

    def _scan(self, seg: Path, records: list, positions: list) -> str | None:
        data = seg.read_bytes()
        offset = 0
        for lineno, line in enumerate(data.split(b"\n"), start=1):
            end = offset + len(line) + 1
            if end > len(data):  # no newline: the tail (empty after a clean last record)
                return (
                    f"{seg}:{lineno}: torn last record {line[:RECORD_MAX_BYTES]!r}"
                    if line
                    else None
                )
            rec = parse_record(line)
            if isinstance(rec, str):
                return f"{seg}:{lineno}: {rec}"
            if records and rec.step != records[-1].step + 1:
                return f"{seg}:{lineno}: step {rec.step} follows step {records[-1].step}"
            records.append(rec)
            positions.append(_Position(seg, end))
            offset = end
        return None

    def _trim_after(self, pos: _Position) -> None:
        segs = self.segments()
        newer = segs[segs.index(pos.segment) + 1 :]
        changed = bool(newer)
        for p in newer:
            p.unlink()
        if pos.segment.stat().st_size > pos.end_offset:
            with open(pos.segment, "r+b") as f:
                f.truncate(pos.end_offset)
                f.flush()
                os.fsync(f.fileno())
        if changed:
            fsync_dir(self.directory)
