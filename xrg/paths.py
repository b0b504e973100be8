"""Untrusted names never become paths, and an output directory is not somebody else's.

Ids read from inputs (an Open-i ``<uId>``, a MIMIC ``dicom_id``, a manifest's case id) are
checked against :data:`SAFE_ID` before they are put into a file name (:func:`safe_id`);
a relative path read from a manifest must stay inside its data directory
(:func:`path_inside`), and a file found while walking an input tree is used only when it
resolves inside that tree, so a symbolic link to a system file is refused, not followed
(:func:`resolves_inside`).

Every directory xrg writes into carries a marker, ``.xrg-dir.json``, saying what made it
(:func:`claim_output_dir`). Writing one kind of output into a directory of another kind,
or into a directory of unknown content, is refused unless ``force`` is given; the
directory's writability is checked first, so a command fails in a second, not after
minutes of work.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

import xrg
from xrg.errors import DataDirError, XrgError
from xrg.io import atomic_write_json

#: What an id that becomes part of a file name may look like: letters, digits, ``.``, ``_``,
#: ``-``, starting with a letter or digit, at most 128 characters (so never ``..`` alone,
#: never a separator, never empty, never hidden).
SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,159}")
#: Longest id read from an input (a report's ``<uId>``, a ``dicom_id``): a case id adds a prefix such as ``openi-``.
MAX_INPUT_ID = 128

MARKER_NAME = ".xrg-dir.json"

#: The kinds of directory xrg makes, and the command that makes each.
DIRECTORY_KINDS: dict[str, str] = {
    "phantom-dataset": "xrg data build",
    "openi-dataset": "xrg data import-openi",
    "mimic-dataset": "xrg data import-mimic",
    "phantom-render": "xrg phantom",
    "generated": "xrg generate",
    "run": "xrg train",
    "evaluators": "xrg eval",
}

#: Files xrg itself leaves in a directory before or besides its marker (its lock, its write check).
_OWN_NAMES = re.compile(r"^(\.xrg\.lock|\.xrg-dir\.json|\.xrg-write-check\..+\.tmp)$")


def safe_id(value: object, what: str, max_length: int = 160) -> str:
    """``value`` if it is a safe id (:data:`SAFE_ID`, at most ``max_length`` characters), else a
    :class:`DataDirError` naming ``what``."""
    if not isinstance(value, str) or len(value) > max_length or not SAFE_ID.fullmatch(value):
        shown = repr(value) if not isinstance(value, str) or len(value) <= 80 else repr(value[:80]) + "..."
        raise DataDirError(
            f"{what} {shown} is not a safe id: ids that become file names must be 1-{max_length} letters, digits, "
            "'.', '_' or '-', starting with a letter or digit"
        )
    return value


def is_safe_id(value: object, max_length: int = MAX_INPUT_ID) -> bool:
    """Whether an id read from an input may become part of a file name (see :func:`safe_id`)."""
    try:
        safe_id(value, "id", max_length)
    except DataDirError:
        return False
    return True


def path_inside(root: str | os.PathLike, relative: object, what: str) -> Path:
    """``root / relative`` for a relative POSIX path that stays inside ``root`` (links resolved).

    Refuses absolute paths, ``..`` components, backslashes, NUL bytes, and a path that a
    symbolic link takes outside ``root``.
    """
    return PathsInside(root)(relative, what)


class PathsInside:
    """:func:`path_inside` for many paths below one ``root``, each directory resolved once.

    A manifest names thousands of images in a few directories; resolving every path from
    the file system's root costs an ``lstat`` per component per path. Here ``root`` and
    each parent directory are resolved once (kept for this object's life), and each file
    costs one ``lstat``: a file that is a symbolic link is resolved in full. The refusals
    are those of :func:`path_inside`.
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self._shown = f"{root}"  # as the caller wrote it, in messages
        try:
            self._base: Path | None = self.root.resolve()
        except (OSError, RuntimeError):  # a link loop
            self._base = None
        self._directories: dict[PurePosixPath, Path | None] = {}

    def _inside(self, resolved: Path) -> bool:
        return self._base is not None and (resolved == self._base or self._base in resolved.parents)

    def _directory(self, relative: PurePosixPath) -> Path | None:
        if relative not in self._directories:
            try:
                resolved: Path | None = (self.root / relative).resolve()
            except (OSError, RuntimeError):
                resolved = None
            self._directories[relative] = resolved if resolved is not None and self._inside(resolved) else None
        return self._directories[relative]

    def __call__(self, relative: object, what: str) -> Path:
        posix = check_relative(relative, what, self._shown)
        directory = self._directory(posix.parent)
        inside = False
        if directory is not None:
            candidate = directory / posix.name
            try:
                resolved = candidate.resolve() if candidate.is_symlink() else candidate
                inside = self._inside(resolved)
            except (OSError, RuntimeError):
                inside = False
        if not inside:
            raise DataDirError(f"{what} {relative!r} leads outside {self._shown} through a symbolic link; refused")
        return self.root / posix


def check_relative(relative: object, what: str, root: str = "its directory") -> PurePosixPath:
    """``relative`` as a relative POSIX path without ``..``, NUL or backslash (not looked up on disk)."""
    if not isinstance(relative, str) or not relative or "\x00" in relative or "\\" in relative:
        raise DataDirError(f"{what} {relative!r} is not a relative path inside {root}")
    posix = PurePosixPath(relative)
    if posix.is_absolute() or re.match(r"^[A-Za-z]:", relative) or ".." in posix.parts:
        raise DataDirError(f"{what} {relative!r} points outside {root} (absolute or with '..'); refused")
    return posix


def resolves_inside(path: str | os.PathLike, root: str | os.PathLike) -> bool:
    """Whether ``path``, with every symbolic link resolved, lies inside ``root`` (or is it)."""
    try:
        resolved, base = Path(path).resolve(), Path(root).resolve()
    except (OSError, RuntimeError):  # a link loop
        return False
    return resolved == base or base in resolved.parents


def files_inside(root: str | os.PathLike, suffixes: Iterable[str]) -> tuple[list[Path], list[Path]]:
    """Regular files below ``root`` with one of ``suffixes`` (case-insensitive), sorted.

    Returns ``(files, refused)``: ``refused`` are those that a symbolic link takes outside
    ``root`` (they are never read). Directories reached through such a link are not entered.
    """
    wanted = tuple(s.lower() for s in suffixes)
    root = Path(root)
    files: list[Path] = []
    refused: list[Path] = []
    for directory, subdirectories, names in os.walk(root, followlinks=False):
        base = Path(directory)
        for name in list(subdirectories):
            if (base / name).is_symlink() and not resolves_inside(base / name, root):
                refused.append(base / name)
                subdirectories.remove(name)
        for name in names:
            path = base / name
            if not name.lower().endswith(wanted):
                continue
            if not resolves_inside(path, root):
                refused.append(path)
            elif path.is_file():
                files.append(path)
    return sorted(files), sorted(refused)


def check_writable_dir(path: str | os.PathLike, what: str = "output directory") -> Path:
    """Create ``path`` if needed and prove it writable by writing a file; one clear error otherwise."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise XrgError(f"{what} {path} is a file, not a directory; choose a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".xrg-write-check.", suffix=".tmp"):
            pass
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise XrgError(f"{what} {path} is not writable ({reason}); choose another directory") from exc
    return path


def read_marker(directory: str | os.PathLike) -> dict | None:
    """The marker of ``directory`` (None when it has none); a damaged one is refused, naming it."""
    path = Path(directory) / MARKER_NAME
    if not path.is_file():
        return None
    if path.is_symlink():
        raise DataDirError(f"{path} is a symbolic link, not an xrg directory marker; delete it")
    try:
        marker = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise DataDirError(f"{path} is damaged ({exc}); delete it if you know what made {directory}") from exc
    if not isinstance(marker, dict) or marker.get("kind") not in DIRECTORY_KINDS:
        raise DataDirError(f"{path} is not an xrg directory marker; delete it if you know what made {directory}")
    return marker


def _legacy_kind(directory: Path) -> str | None:
    """The kind of a directory made before markers existed (or by the library, which writes none),
    when its files say it unambiguously: a phantom build's record, or an xrg checkpoint that loads."""
    if (directory / "build.json").is_file() and (directory / "manifest.jsonl").is_file():
        try:
            if "rendering_key" in json.loads((directory / "build.json").read_text(encoding="utf-8")):
                return "phantom-dataset"
        except (OSError, UnicodeDecodeError, ValueError, RecursionError):
            pass
    from xrg.checkpoint import read_checkpoint
    from xrg.errors import CheckpointError

    candidates = [
        directory / "checkpoint.pt",
        *sorted(directory.glob("*.pt"))[:4],
        *sorted(directory.glob("vcn/*.pt"))[:4],
    ]
    for candidate in candidates:
        if candidate.is_file() and not candidate.is_symlink():
            try:
                read_checkpoint(candidate)
            except CheckpointError:
                continue
            return "evaluators" if (directory / "cohort").is_dir() else "run"
    # An experiment directory (the book's, or `xrg experiment`'s): it holds runs and evaluators.
    for child in sorted(p for p in directory.iterdir() if p.is_dir() and not p.is_symlink())[:32]:
        try:
            marker = read_marker(child)
        except DataDirError:
            continue
        kind = marker["kind"] if marker else _legacy_kind(child)
        if kind in ("run", "evaluators"):
            return "run"
    return None


def check_claim(directory: str | os.PathLike, kind: str, *, force: bool = False, what: str = "--out") -> str | None:
    """Refuse (a :class:`DataDirError`) what :func:`claim_output_dir` would refuse, writing nothing.

    Returns the kind the directory already has (None for a new or empty one).
    """
    if kind not in DIRECTORY_KINDS:
        raise ValueError(f"kind must be one of {sorted(DIRECTORY_KINDS)}, got {kind!r}")
    directory = Path(directory)
    if not directory.is_dir():
        return None
    marker = read_marker(directory)
    found = marker["kind"] if marker else _legacy_kind(directory)
    if found is None:
        foreign = sorted(p.name for p in directory.iterdir() if not _OWN_NAMES.match(p.name))
        if foreign and not force:
            shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
            raise DataDirError(
                f"{what} {directory} already holds files that xrg did not make ({shown}); refusing to write "
                f"{DIRECTORY_KINDS[kind]} output into it: choose an empty directory, or pass --force"
            )
    elif found != kind and not force:
        raise DataDirError(
            f"{what} {directory} was made by `{DIRECTORY_KINDS[found]}` ({found}); refusing to write "
            f"`{DIRECTORY_KINDS[kind]}` output ({kind}) into it: choose another directory, or pass --force"
        )
    return found


def claim_output_dir(directory: str | os.PathLike, kind: str, *, force: bool = False, what: str = "--out") -> Path:
    """Make ``directory`` (writable) ``kind``'s output, refusing a directory that belongs to something else.

    An empty or new directory, or one already marked ``kind``, is claimed (the marker is
    written). A directory marked with another kind, or holding files but no marker, is
    refused with what made it, unless ``force``.
    """
    check_claim(directory, kind, force=force, what=what)
    directory = check_writable_dir(directory, what)
    marker = read_marker(directory)
    if marker is None or marker.get("kind") != kind:
        atomic_write_json(
            directory / MARKER_NAME, {"kind": kind, "made_by": DIRECTORY_KINDS[kind], "xrg_version": xrg.__version__}
        )
    return directory
