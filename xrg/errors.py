"""Typed errors raised by xrg.

Every error names the input it refused and what is wrong with it, so a user can fix the
input instead of reading a traceback from deep inside the library. All derive from
:class:`XrgError`, which is also a :class:`ValueError` so generic callers can catch it.
"""

from __future__ import annotations


class XrgError(ValueError):
    """Base class of every error xrg raises on purpose."""


class ReportError(XrgError):
    """A report (XML or free text) could not be parsed or is unusable."""


class EmptyReportError(ReportError):
    """A report has no usable text."""


class FindingError(XrgError):
    """A structured finding is malformed (unknown kind, side, zone or severity)."""


class VocabularyError(XrgError):
    """A vocabulary file is malformed or does not match what it is used with."""


class ImageError(XrgError):
    """An image file is unreadable, corrupted, of the wrong mode or the wrong size."""


class ArchiveError(XrgError):
    """An archive is unreadable or has a member that would escape the target directory."""


class DataDirError(XrgError):
    """A data directory or manifest is missing or malformed."""


class ResourceError(XrgError):
    """An embedded resource (the Open-i reports, the CT) cannot be found."""


class ConfigError(XrgError):
    """A configuration or profile value is invalid."""


class CheckpointError(XrgError):
    """A checkpoint is unreadable, truncated, or from another model, vocabulary or version."""


class TrainingDiverged(XrgError):
    """A training loss became NaN or infinite; the run stopped and its last good checkpoint is kept."""


class DiskFullError(OSError, XrgError):
    """The disk (or quota) filled up while a file was written; the previous file is kept unchanged.

    An :class:`OSError` (``errno`` ENOSPC, EDQUOT or EFBIG) as well as an :class:`XrgError`, so
    callers catching either see it and the command line prints it as one line.
    """


class TrainingStopped(XrgError):
    """A training loop stopped on SIGINT/SIGTERM after saving its progress; calling it again resumes.

    ``signal`` is the signal's name, ``step`` the optimizer steps done, ``checkpoint`` the
    resumable file written (never under the final model's name) and ``resume`` how to continue
    (the call to make again). The command line prints it with the command that resumes and
    exits with status 130.
    """

    def __init__(self, message: str, *, signal: str, step: int, checkpoint: object, resume: str) -> None:
        super().__init__(message)
        self.signal, self.step, self.checkpoint, self.resume = signal, step, checkpoint, resume
