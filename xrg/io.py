"""Crash-safe file writing.

A file is written to a temporary name in the same directory, flushed to disk and renamed
over the final name, so a killed process or a full disk never leaves a partial file under
the final name: readers see the old file or the new one, nothing in between.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, BinaryIO

from xrg.errors import DiskFullError

#: errno values that mean "no room left": a full disk, an exceeded quota, a file too large.
_UMASK_LOCK = threading.Lock()

DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)})


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Call ``write(fileobj)`` on a temporary file, then rename it to ``path`` atomically.

    A full disk (or quota) is raised as :class:`~xrg.errors.DiskFullError` naming ``path`` and
    saying that its previous version, if any, is kept; the temporary file is removed.
    """
    path = Path(path)
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp makes 0600; the rename would keep it
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
        if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS and not isinstance(exc, DiskFullError):
            raise disk_full_error(path, exc) from exc
        raise
    return path


def current_umask() -> int:
    """The process's umask: from /proc/self/status (Linux), else by setting it and putting it back."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def disk_full_error(path: Path, exc: OSError) -> DiskFullError:
    """The error for a write of ``path`` that ran out of space."""
    kept = f"the previous {path} is kept unchanged" if path.exists() else f"nothing was written to {path}"
    return DiskFullError(
        exc.errno, f"disk full while writing {path} ({exc.strerror or exc}); {kept}; free some space and try again"
    )


def read_json_file(path: str | os.PathLike, what: str, fix: str) -> Any:
    """A JSON file xrg wrote itself, or a :class:`~xrg.errors.DataDirError` naming it, what it is and ``fix``."""
    from xrg.errors import DataDirError

    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise DataDirError(f"{what} {path} is damaged or unreadable ({str(exc)[:200]}); {fix}") from exc


def read_json_mapping(path: str | os.PathLike, what: str, fix: str) -> dict[str, Any]:
    """:func:`read_json_file` that must hold a JSON object."""
    from xrg.errors import DataDirError

    data = read_json_file(path, what, fix)
    if not isinstance(data, dict):
        raise DataDirError(f"{what} {path} is damaged (a JSON {type(data).__name__}, not an object); {fix}")
    return data


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda handle: handle.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def atomic_write_jsonl(path: str | os.PathLike, rows: Iterable[Any]) -> Path:
    return atomic_write_text(path, "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows))


def append_jsonl(path: str | os.PathLike, row: Any) -> None:
    """Append one JSON line (metrics logs); each line is written with a single write call."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(row, sort_keys=True) + "\n")
    except OSError as exc:
        if exc.errno in DISK_FULL_ERRNOS:
            raise DiskFullError(
                exc.errno,
                f"disk full while appending to {path} ({exc.strerror or exc}); its earlier lines are kept; "
                "free some space and try again",
            ) from exc
        raise


def remove_temporaries(directory: str | os.PathLike) -> list[Path]:
    """Delete the ``.NAME.*.tmp`` files :func:`atomic_write` leaves when its process is killed.

    Call it only where no other process is writing into ``directory``. Returns what was removed.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed = []
    for leftover in sorted(directory.glob(".*.tmp")):
        if leftover.is_file() and not leftover.is_symlink():
            leftover.unlink(missing_ok=True)
            removed.append(leftover)
    return removed
