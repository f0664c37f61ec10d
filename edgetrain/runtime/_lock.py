"""One writer per checkpoint directory: a lock file holding the writer's PID.

NOTE [ Checkpoint lock ]
    `DIR/lock` records its holder as JSON (`pid`, `host`, and the process's start time where the
    OS tells it, so that a PID reused by another program is not mistaken for the holder). The
    holder also keeps an exclusive `flock` on the file where the OS offers one: the kernel drops
    it when the holder dies, even by `kill -9`. A directory is locked when the flock is held by
    another open file, or when the recorded holder is a live process (same host, same start
    time) other than this one; otherwise the lock is stale (its holder died) and is taken over.
    The lock is released (file removed, flock dropped) on exit, including on exceptions. After
    taking the flock the holder checks that the path still names the file it locked: a releaser
    may have removed it in between, and a lock on an unlinked file guards nothing.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

from edgetrain.errors import CheckpointLockedError

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - Windows: the PID record alone
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = "lock"


def process_start_time(pid: int) -> str | None:
    """The start time of process `pid` in clock ticks since boot (Linux), else None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    fields = stat[stat.rfind(")") + 2 :].split()  # after "(comm)", which may hold spaces
    return fields[19] if len(fields) > 19 else None


def pid_alive(pid: int) -> bool:
    """Whether a process with this PID exists (one we may not signal counts as alive)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def _me() -> dict:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "start": process_start_time(os.getpid()),
    }


def _holder_alive(owner: dict) -> bool:
    if owner["host"] != socket.gethostname():
        return True  # cannot check another host's processes: assume it runs
    if not pid_alive(owner["pid"]):
        return False
    start = process_start_time(owner["pid"])
    return owner.get("start") is None or start is None or start == owner["start"]


def _read_owner(fd: int) -> dict | None:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        owner = json.loads(os.read(fd, 4096).decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    ok = (
        isinstance(owner, dict)
        and isinstance(owner.get("pid"), int)
        and not isinstance(owner.get("pid"), bool)
        and isinstance(owner.get("host"), str)
        and isinstance(owner.get("start"), str | None)
    )
    return owner if ok else None


class CheckpointLock:
    """`with CheckpointLock(directory):` ... NOTE [ Checkpoint lock ]."""

    def __init__(self, directory: "str | os.PathLike") -> None:
        self.path = Path(directory) / LOCK_NAME
        self._fd: int | None = None

    def __enter__(self) -> "CheckpointLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(10):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                if self._try_lock(fd):
                    self._fd = fd
                    return
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)  # the file was replaced under us: try again on the new one
        raise CheckpointLockedError(
            f"could not take the lock {self.path}: it keeps being replaced by another process"
        )

    def _try_lock(self, fd: int) -> bool:
        """True once `fd` holds the lock; False if the path changed; raises if locked."""
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise self._locked(_read_owner(fd)) from None
            except OSError:
                pass  # a file system without flock: the PID record alone decides
        try:
            if os.stat(self.path).st_ino != os.fstat(fd).st_ino:
                return False
        except FileNotFoundError:
            return False
        owner = _read_owner(fd)
        if owner is not None and owner["pid"] != os.getpid() and _holder_alive(owner):
            raise self._locked(owner)
        record = json.dumps(_me()).encode()
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, record)
        os.fsync(fd)
        return True

    def _locked(self, owner: dict | None) -> CheckpointLockedError:
        who = (
            f"PID {owner['pid']} on {owner['host']}"
            if owner
            else "another process (its PID is not recorded yet)"
        )
        return CheckpointLockedError(
            f"checkpoint directory {self.path.parent} is in use by {who} (lock file "
            f"{self.path}); two writers would overwrite each other's checkpoints. Wait for that "
            "run to finish or stop it, or use another --resume folder; if no edgetrain process "
            f"with that PID runs, delete {self.path}"
        )

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                os.unlink(self.path)
        except FileNotFoundError:
            pass
        finally:
            os.close(fd)
