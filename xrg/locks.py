"""One run directory, one writer: an exclusive lock on a directory xrg writes into.

:func:`directory_lock` takes an ``fcntl.flock`` on ``DIR/.xrg.lock`` for as long as the
``with`` block runs and writes the holder's PID into it. A second process asking for the
same directory is refused at once with a :class:`DirectoryBusyError` naming that PID; the
lock goes with its process, so a killed run never leaves a stale lock behind. Within one
process the lock is re-entrant (a trainer that trains its VCNs into its own run directory
takes it again), counted per directory: threads of one process count as one writer. The lock
file is opened without following a symbolic link and must be a plain file.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

from xrg.errors import XrgError

LOCK_NAME = ".xrg.lock"

_held: dict[Path, list] = {}  # resolved directory -> [file object, depth]
_guard = threading.Lock()


class DirectoryBusyError(XrgError):
    """Another process is writing into the directory."""


def _holder(lock_path: Path) -> str:
    try:
        text = lock_path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return "another process"
    pid = text.split()[0] if text else ""
    return f"process {pid}" if pid.isdigit() else "another process"


def _open_lock_file(lock_path: Path, what: str):
    """``lock_path`` opened for writing without following a symbolic link; refused unless a plain file of ours."""
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), 0o666)
    except OSError as exc:
        if lock_path.is_symlink():
            raise XrgError(
                f"{what} {lock_path.parent}: its lock file {lock_path} is a symbolic link; refused (delete it if it is "
                "not yours)"
            ) from exc
        raise
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
        os.close(fd)
        raise XrgError(f"{what} {lock_path.parent}: its lock file {lock_path} is not a plain file; refused")
    return os.fdopen(fd, "r+", encoding="utf-8")


@contextlib.contextmanager
def directory_lock(directory: str | os.PathLike, what: str = "directory") -> Iterator[Path]:
    """Hold the exclusive writer's lock of ``directory`` (created if missing) inside the block."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    key = directory.resolve()
    with _guard:
        entry = _held.get(key)
        if entry is not None:
            entry[1] += 1
        else:
            lock_path = key / LOCK_NAME
            handle = _open_lock_file(lock_path, what)
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                raise DirectoryBusyError(
                    f"{what} {directory} is in use by {_holder(lock_path)} (lock {lock_path}); wait for it to "
                    "finish or choose another directory"
                ) from None
            except OSError:
                handle.close()
                raise
            handle.seek(0)
            handle.truncate()  # our own regular file (checked on opening), never a link's target
            handle.write(f"{os.getpid()}\n")
            handle.flush()
            _held[key] = [handle, 1]
    try:
        yield directory
    finally:
        with _guard:
            entry = _held[key]
            entry[1] -= 1
            if entry[1] == 0:
                del _held[key]
                entry[0].close()  # closing the file releases the flock


def is_locked_here(directory: str | os.PathLike) -> bool:
    """Whether this process holds the lock of ``directory``."""
    return Path(directory).resolve() in _held


@contextlib.contextmanager
def own_output_dir(
    directory: str | os.PathLike, kind: str, *, force: bool = False, what: str = "--out"
) -> Iterator[Path]:
    """Inside the block, this process is the one writer of ``directory``, claimed as ``kind``.

    The directory's writability is checked first, then its lock is taken, then it is claimed
    (:func:`xrg.paths.claim_output_dir`), so a refused second writer leaves no trace in it.
    """
    from xrg.paths import check_claim, check_writable_dir, claim_output_dir

    directory = check_writable_dir(directory, what)
    check_claim(directory, kind, force=force, what=what)  # a refused directory gets no lock file either
    with directory_lock(directory, "run directory" if kind == "run" else "data directory"):
        yield claim_output_dir(directory, kind, force=force, what=what)
