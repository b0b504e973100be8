"""Self-describing checkpoints: weights with their run config, vocabulary and code version.

A checkpoint is one ``torch.save`` dict written atomically (a killed process leaves the old
file or the new one, never half of one). Besides the tensors it holds only plain values —
the run config as a dict, the vocabulary as its word list and fingerprint, the progress as
ints, random number generator states as tensors — so it is read back with
``torch.load(..., weights_only=True)`` and never unpickles code.

:func:`load_checkpoint` refuses, with a :class:`~xrg.errors.CheckpointError` saying which,
a missing, truncated or corrupt file, a file that is not an xrg checkpoint, one of another
kind (a VCN where an XRayGAN run was expected), another major code version, another run
config (naming the differing fields) or another vocabulary (by fingerprint).
"""

from __future__ import annotations

import io
import os
import pickle
import re
from pathlib import Path
from typing import Any, Mapping, TypeVar

import torch

import xrg
from xrg.data.reports import Vocabulary
from xrg.errors import CheckpointError, ConfigError, VocabularyError
from xrg.io import atomic_write_bytes
from xrg.train.config import config_differences, config_from_mapping, config_to_dict

CHECKPOINT_FORMAT = "xrg-checkpoint"
CHECKPOINT_KINDS: tuple[str, ...] = ("xraygan", "vcn", "baseline", "classifier")

ConfigT = TypeVar("ConfigT")


def _major(version: str) -> str:
    return str(version).split(".", 1)[0]


def save_checkpoint(
    path: str | os.PathLike,
    kind: str,
    config: Any,
    vocabulary: Vocabulary,
    **contents: Any,
) -> Path:
    """Write ``contents`` (state dicts, progress, metrics ...) with the config, vocabulary and version."""
    if kind not in CHECKPOINT_KINDS:
        raise ValueError(f"kind must be one of {CHECKPOINT_KINDS}, got {kind!r}")
    payload = {
        "format": CHECKPOINT_FORMAT,
        "kind": kind,
        "xrg_version": xrg.__version__,
        "config": config_to_dict(config),
        "vocabulary": vocabulary.to_dict(),
        **contents,
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(
    path: str | os.PathLike,
    kind: str,
    config: Any | None = None,
    vocabulary: Vocabulary | None = None,
    map_location: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Read and check a checkpoint of ``kind``; see the module docstring for what is refused.

    ``config`` and ``vocabulary``, when given, must equal the stored ones (a resumed run
    must continue with the settings and the words it started with).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        # weights_only refuses a class with "Unsupported global: GLOBAL <name>"; anything else is damage.
        refused = re.search(r"GLOBAL (\S+)", str(exc))
        if refused:
            raise CheckpointError(
                f"checkpoint {path} holds a pickled {refused.group(1)} object; xrg checkpoints hold only tensors "
                "and plain values and are never unpickled beyond that"
            ) from exc
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt (unreadable pickle data)") from exc
    except (RuntimeError, EOFError, OSError, ValueError, KeyError) as exc:
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not an xrg checkpoint (a torch file without the {CHECKPOINT_FORMAT!r} header)")
    if payload.get("kind") != kind:
        raise CheckpointError(f"checkpoint {path} is a {payload.get('kind')!r} checkpoint, expected {kind!r}")
    stored_version = str(payload.get("xrg_version"))
    if _major(stored_version) != _major(xrg.__version__):
        raise CheckpointError(
            f"checkpoint {path} was written by xrg {stored_version}, a different major version from this "
            f"xrg {xrg.__version__}; retrain or use a matching xrg"
        )
    for key in ("config", "vocabulary"):
        if not isinstance(payload.get(key), dict):
            raise CheckpointError(f"checkpoint {path} has no {key} (damaged or written by something else)")
    if config is not None:
        differences = config_differences(payload["config"], config_to_dict(config))
        if differences:
            raise CheckpointError(
                f"checkpoint {path} was written with another {type(config).__name__}; differing fields "
                f"(checkpoint → now): {'; '.join(differences)}"
            )
    if vocabulary is not None:
        stored = payload["vocabulary"].get("fingerprint")
        if stored != vocabulary.fingerprint:
            raise CheckpointError(
                f"checkpoint {path} was trained with another vocabulary (fingerprint {str(stored)[:12]}, "
                f"the data's is {vocabulary.fingerprint[:12]}); use the dataset it was trained on"
            )
    return payload


def checkpoint_config(payload: Mapping[str, Any], cls: type[ConfigT], path: str | os.PathLike = "checkpoint") -> ConfigT:
    """The run config stored in a loaded checkpoint, as a ``cls`` instance."""
    try:
        return config_from_mapping(cls, payload["config"], where=f"config of checkpoint {path}")
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from exc


def checkpoint_vocabulary(payload: Mapping[str, Any], path: str | os.PathLike = "checkpoint") -> Vocabulary:
    """The vocabulary stored in a loaded checkpoint."""
    try:
        return Vocabulary.from_dict(payload["vocabulary"], where=f"vocabulary of checkpoint {path}")
    except VocabularyError as exc:
        raise CheckpointError(str(exc)) from exc
