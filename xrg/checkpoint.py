"""Self-describing checkpoints: weights with their model config, run config, vocabulary and code version.

A checkpoint is one ``torch.save`` dict written atomically (a killed process leaves the old
file or the new one, never half of one). Besides the tensors it holds only plain values —
the model config (``model_config``: the fields that decide the architecture, from which a
model rebuilds itself, :meth:`xrg.models.base.CheckpointedModel.from_checkpoint`) and the run
config (``config``: everything the run was trained with) as dicts, the vocabulary as its word
list and fingerprint, the progress as ints, random number generator states as tensors — so
it is read back with ``torch.load(..., weights_only=True)`` and never unpickles code. This
module is neutral: generation and evaluation read checkpoints through it without importing
the training code.

:func:`load_checkpoint` refuses, with a :class:`~xrg.errors.CheckpointError` saying which,
a missing, truncated or corrupt file, a pickle that needs a global (a class or function)
weights_only loading does not allow (naming it; the pickle is never run), a file that is not
an xrg checkpoint, one of another kind (a VCN where an XRayGAN run was expected), another
major code version (one written by an older xrg, 0.x or 1.x, says how to retrain it), another run config (naming the differing fields) or another vocabulary
(by fingerprint). :func:`require_finished` refuses the resumable checkpoint of a training
that was stopped part-way where a trained model is expected.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import pickletools
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import torch

import xrg
from xrg.config import config_differences, config_from_mapping, config_to_dict
from xrg.data.reports import Vocabulary
from xrg.errors import CheckpointError, ConfigError, VocabularyError
from xrg.io import atomic_write_bytes

CHECKPOINT_FORMAT = "xrg-checkpoint"
INTEGRITY_KEY = "integrity"
#: SHA-256 over every value of the checkpoint in a fixed order: each tensor's dtype, shape
#: and bytes, each plain value's type and repr, each mapping's keys.
INTEGRITY_ALGORITHM = "sha256-walk-v1"
CHECKPOINT_KINDS: tuple[str, ...] = (
    "xraygan", "vcn", "baseline", "classifier", "pggan", "critic_classifier", "diffusevae_vae", "diffusevae", "moco",
)  # fmt: skip
#: The file a training run keeps its model in (``RUN/checkpoint.pt``).
CHECKPOINT_NAME = "checkpoint.pt"
#: How to make a checkpoint of each kind again with this xrg (named when an older one is refused).
RETRAIN_COMMANDS: dict[str, str] = {
    "xraygan": "xrg train xraygan --profile PROFILE --data DATA --out RUN",
    "baseline": "xrg train baseline --method METHOD --profile PROFILE --data DATA --out RUN",
    "vcn": "xrg train vcn --profile PROFILE --data DATA --out RUN",
    "pggan": "xrg train pggan --profile PROFILE --data DATA --out RUN",
    "diffusevae_vae": "xrg train diffusevae --stage vae --profile PROFILE --data DATA --out RUN",
    "diffusevae": "xrg train diffusevae --stage ddpm (then finetune) --profile PROFILE --data DATA --out RUN",
    "moco": "xrg train diffusevae --stage moco --profile PROFILE --data DATA --out RUN",
    "critic_classifier": "xrg train pathology --backbone critic --pggan RUN --profile PROFILE --data DATA --out OUT",
    "classifier": "delete the evaluators directory and run xrg eval RUN --data DATA --profile PROFILE "
    "(a search classifier: xrg train pathology --backbone densenet --profile PROFILE --data DATA --out OUT)",
}

#: Why the checkpoints of an older major version cannot be read any more.
OLD_LAYOUTS: dict[str, str] = {
    "0": "no separate model config",
    "1": "run configs with the model fields beside the training fields, not nested under model",
}

ConfigT = TypeVar("ConfigT")


def _major(version: str) -> str:
    return str(version).split(".", 1)[0]


def save_checkpoint(
    path: str | os.PathLike,
    kind: str,
    config: Any,
    vocabulary: Vocabulary,
    *,
    model_config: Any | None = None,
    **contents: Any,
) -> Path:
    """Write ``contents`` (state dicts, progress, metrics ...) with the configs, vocabulary and version.

    ``config`` is the run config, ``model_config`` the model's own (stored separately, as
    ``model_config``; models pass it through :meth:`~xrg.models.base.CheckpointedModel.save`).
    """
    if kind not in CHECKPOINT_KINDS:
        raise ValueError(f"kind must be one of {CHECKPOINT_KINDS}, got {kind!r}")
    payload = {
        "format": CHECKPOINT_FORMAT,
        "kind": kind,
        "xrg_version": xrg.__version__,
        "config": config_to_dict(config),
        "vocabulary": vocabulary.to_dict(),
        **({} if model_config is None else {"model_config": config_to_dict(model_config)}),
        **contents,
    }
    payload[INTEGRITY_KEY] = {"algorithm": INTEGRITY_ALGORITHM, "digest": payload_digest(payload)}
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def read_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load an xrg checkpoint of any kind and verify its checksum; every failure is a :class:`CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    _check_container(path)
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except RuntimeError as exc:
        if "cuda" in str(exc).lower() and not torch.cuda.is_available():
            raise CheckpointError(
                f"checkpoint {path} could not be put on {map_location}: this machine has no usable CUDA device "
                "(the file itself was not judged); use --device cpu"
            ) from exc
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt: {torch_error_summary(exc)}") from exc
    except pickle.UnpicklingError as exc:
        refused = refused_global(path, exc)
        if refused:
            raise CheckpointError(
                f"checkpoint {path} refused: it needs the global {refused}, which weights_only loading does not "
                "allow; only load checkpoints you trust, and never with weights_only=False: unpickling this one "
                "could run arbitrary code (xrg checkpoints hold only tensors and plain values)"
            ) from exc
        if not zipfile.is_zipfile(path) and pickle_globals(_pickle_data(path)) is not None:
            raise CheckpointError(
                f"checkpoint {path} is a plain pickle (pickle.dump), not a torch.save file; it is not an xrg checkpoint"
            ) from exc
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt (unreadable pickle data)") from exc
    except Exception as exc:  # noqa: BLE001 - torch.load of damaged bytes raises many kinds (EOFError, IndexError ...)
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt: {torch_error_summary(exc)}") from exc
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path} is not an xrg checkpoint (a torch file without the {CHECKPOINT_FORMAT!r} header)"
        )
    try:
        verify_integrity(payload, path)
    except RecursionError as exc:
        raise CheckpointError(f"checkpoint {path} nests its values too deeply to be an xrg checkpoint") from exc
    for key, kind in (("progress", dict), ("state", dict), ("config", dict), ("vocabulary", dict)):
        if key in payload and payload[key] is not None and not isinstance(payload[key], kind):
            raise CheckpointError(f"checkpoint {path}: {key} is a {type(payload[key]).__name__}, not a mapping")
    return payload


#: Largest checkpoint read (a paper-profile XRayGAN with optimizer states is well under 2 GiB).
MAX_CHECKPOINT_BYTES = 16 << 30


def _check_container(path: Path) -> None:
    """Refuse a zip whose entries torch.save would never write: compressed ones (a decompression bomb
    unpacks inside torch.load, before any check), or more bytes than :data:`MAX_CHECKPOINT_BYTES`."""
    try:
        if not zipfile.is_zipfile(path):
            return
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
    except (OSError, zipfile.BadZipFile, ValueError, EOFError):
        return  # torch.load names the damage
    compressed = [info.filename for info in infos if info.compress_type != zipfile.ZIP_STORED]
    if compressed:
        raise CheckpointError(
            f"checkpoint {path} has compressed entries ({compressed[0]!r} ...), which torch.save never writes; "
            "refused unread (a repacked or crafted file)"
        )
    if sum(info.file_size for info in infos) > MAX_CHECKPOINT_BYTES:
        raise CheckpointError(f"checkpoint {path} unpacks to more than {MAX_CHECKPOINT_BYTES >> 30} GiB; refused")


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
    payload = read_checkpoint(path, map_location)
    if payload.get("kind") != kind:
        raise CheckpointError(f"checkpoint {path} is a {payload.get('kind')!r} checkpoint, expected {kind!r}")
    stored_version = str(payload.get("xrg_version"))
    if _major(stored_version) != _major(xrg.__version__):
        if _major(stored_version).isdigit() and int(_major(stored_version)) < int(_major(xrg.__version__)):
            raise CheckpointError(
                f"checkpoint {path} was written by an older xrg ({stored_version}), a different major version "
                f"from this xrg {xrg.__version__}: its layout "
                f"({OLD_LAYOUTS.get(_major(stored_version), 'an older one')}) cannot be read any more; "
                f"retrain it with this xrg: {RETRAIN_COMMANDS.get(kind, 'the command that trained it')}"
            )
        raise CheckpointError(
            f"checkpoint {path} was written by xrg {stored_version}, a different major version from this "
            f"xrg {xrg.__version__}; retrain or use a matching xrg"
        )
    for key in ("config", "vocabulary"):
        if not isinstance(payload.get(key), dict):
            raise CheckpointError(f"checkpoint {path} has no {key} (damaged or written by something else)")
    if config is not None:
        differences = config_differences(payload["config"], config_to_dict(config), defaults=_defaults(config))
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


def _defaults(config: Any) -> dict[str, Any] | None:
    """The default values of ``config``'s class as a dict, or None when it has no default instance."""
    try:
        return config_to_dict(type(config)())
    except (TypeError, ValueError):  # a required field, or defaults its checks refuse
        return None


def payload_digest(payload: Mapping[str, Any]) -> str:
    """The :data:`INTEGRITY_ALGORITHM` digest of a checkpoint payload (its ``integrity`` entry left out)."""
    digest = hashlib.sha256()

    def walk(value: Any) -> None:
        if isinstance(value, torch.Tensor):
            tensor = value.detach().to("cpu").contiguous()
            digest.update(f"T{tensor.dtype}{tuple(tensor.shape)}:".encode())
            if tensor.numel():
                digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(value, Mapping):
            digest.update(f"M{len(value)}:".encode())
            for key in sorted(value, key=repr):
                digest.update(f"K{key!r}:".encode())
                walk(value[key])
        elif isinstance(value, (list, tuple)):
            digest.update(f"L{type(value).__name__}{len(value)}:".encode())
            for item in value:
                walk(item)
        else:
            digest.update(f"V{type(value).__name__}:{value!r};".encode())

    walk({key: value for key, value in payload.items() if key != INTEGRITY_KEY})
    return digest.hexdigest()


def verify_integrity(payload: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Refuse a checkpoint whose stored digest is missing or does not match its contents."""
    record = payload.get(INTEGRITY_KEY)
    if not isinstance(record, Mapping) or record.get("algorithm") != INTEGRITY_ALGORITHM:
        raise CheckpointError(
            f"checkpoint {path} carries no {INTEGRITY_ALGORITHM} checksum (written by an older xrg, or damaged); "
            "it cannot be verified: retrain it with this xrg"
        )
    if record.get("digest") != payload_digest(payload):
        raise CheckpointError(
            f"checkpoint {path} is damaged: its contents do not match the checksum stored in it "
            "(bytes changed inside a tensor or value); restore it from a copy or retrain"
        )


def torch_error_summary(error: BaseException) -> str:
    """torch's message about a file it could not load, first line only, without its advice to unpickle code."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    text = re.split(
        r"(?i)\b(?:re-?running|this file can still be loaded|in pytorch 2\.6|if you trust|weights_only=False)", text
    )[0].rstrip(" .;:,(")
    return text[:300] or type(error).__name__


def require_finished(payload: Mapping[str, Any], path: str | os.PathLike, how_to_finish: str) -> None:
    """Refuse a checkpoint marked unfinished (a stopped training's resumable state) where a trained model is expected.

    Checkpoints without the mark (written before it existed) count as finished.
    """
    progress = payload.get("progress")
    if isinstance(progress, Mapping) and progress.get("finished") is False:
        raise CheckpointError(
            f"checkpoint {path} holds a training stopped at step {progress.get('step')}, not a trained model; "
            f"{how_to_finish}"
        )


# --------------------------------------------------------------------------------------
# Naming what a refused pickle needs
# --------------------------------------------------------------------------------------

_STRING_OPCODES = frozenset({"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING",
                             "BINSTRING", "STRING"})  # fmt: skip
_NO_PUSH_OPCODES = frozenset({"PROTO", "FRAME", "MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT"})


def pickle_globals(data: bytes, any_protocol: bool = False) -> list[str] | None:
    """The globals (``module.name``) a pickle stream imports, in order, read without unpickling it.

    ``None`` when ``data`` is not one complete pickle (damaged, cut short, or something else);
    unless ``any_protocol``, only protocol 2 or later counts (those start with a PROTO opcode,
    so other binary data is not read as protocol 0 text). The opcodes are only parsed
    (:func:`pickletools.genops`); the strings ``STACK_GLOBAL`` takes are followed through the memo.
    """
    if not any_protocol and not data.startswith(b"\x80"):
        return None
    found: list[str] = []
    memo: dict[int, Any] = {}
    pushed: list[Any] = []  # the values the opcodes pushed; only strings are kept (others are None)
    try:
        for opcode, arg, _ in pickletools.genops(io.BytesIO(data)):
            name = opcode.name
            if name in ("GLOBAL", "INST"):
                found.append(".".join(str(arg).split(" ", 1)))
                pushed.append(None)
            elif name == "STACK_GLOBAL":
                module, attribute = pushed[-2:] if len(pushed) >= 2 else (None, None)
                found.append(f"{module}.{attribute}" if isinstance(module, str) and isinstance(attribute, str) else "?")
                del pushed[-2:]
                pushed.append(None)
            elif name in _STRING_OPCODES:
                pushed.append(arg if isinstance(arg, str) else bytes(arg).decode("latin-1"))
            elif name == "MEMOIZE":
                memo[len(memo)] = pushed[-1] if pushed else None
            elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
                memo[int(arg)] = pushed[-1] if pushed else None
            elif name in ("GET", "BINGET", "LONG_BINGET"):
                pushed.append(memo.get(int(arg)))
            elif name == "STOP":
                return found
            elif name not in _NO_PUSH_OPCODES:
                pushed.append(None)
            del pushed[:-2]  # only the last two matter
    except Exception:  # noqa: BLE001 - anything genops cannot parse is not a complete pickle
        return None
    return None


def _allowed_globals() -> set[str]:
    """The globals torch's weights_only loading allows (empty if this torch hides its list)."""
    allowed: set[str] = set()
    try:
        from torch import _weights_only_unpickler

        allowed.update(_weights_only_unpickler._get_allowed_globals())
        for item in torch.serialization.get_safe_globals():
            item = item[0] if isinstance(item, tuple) else item
            allowed.add(f"{getattr(item, '__module__', '')}.{getattr(item, '__qualname__', '')}")
    except Exception:  # noqa: BLE001 - a private torch API; without it the first global is named
        pass
    return allowed


def _pickle_data(path: str | os.PathLike) -> bytes:
    """The pickle stream of ``path``: the ``data.pkl`` of a torch zip file, else the file itself (b"" if unreadable)."""
    path = Path(path)
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                members = [m for m in archive.namelist() if m.endswith("/data.pkl") or m == "data.pkl"]
                return archive.read(members[0]) if members else b""
        return path.read_bytes()
    except (OSError, zipfile.BadZipFile, ValueError, EOFError, RuntimeError):
        return b""


def refused_global(path: str | os.PathLike, error: BaseException) -> str | None:
    """The global that made weights_only loading refuse ``path``, or None when the file is damaged.

    torch names it (``GLOBAL module.name``) when it reached it; a plain ``pickle.dump`` of
    protocol 4 or 5 it refuses earlier, at an opcode torch never writes, so then the pickle
    (the file itself, or the ``data.pkl`` of a torch zip file) is read without running it, and
    the first global torch does not allow is named. Either way only a complete pickle counts:
    one cut short is damage, whatever it would have needed.
    """
    data = _pickle_data(path)
    named = re.search(r"GLOBAL (\S+)", str(error))
    if named:
        return named.group(1) if pickle_globals(data, any_protocol=True) is not None else None
    found = pickle_globals(data)
    if not found:
        return None
    allowed = _allowed_globals()
    return next((name for name in found if name not in allowed), None)


def checkpoint_config(
    payload: Mapping[str, Any], cls: type[ConfigT], path: str | os.PathLike = "checkpoint"
) -> ConfigT:
    """The run config stored in a loaded checkpoint, as a ``cls`` instance."""
    try:
        return config_from_mapping(cls, payload["config"], where=f"config of checkpoint {path}")
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from exc


def checkpoint_model_config(
    payload: Mapping[str, Any], cls: type[ConfigT], path: str | os.PathLike = "checkpoint"
) -> ConfigT:
    """The model config stored in a loaded checkpoint, as a ``cls`` instance."""
    stored = payload.get("model_config")
    if not isinstance(stored, Mapping):
        raise CheckpointError(
            f"checkpoint {path} has no model config (damaged, or not written by a model's save()); "
            f"retrain it with this xrg: {RETRAIN_COMMANDS.get(str(payload.get('kind')), 'the command that trained it')}"
        )
    try:
        return config_from_mapping(cls, stored, where=f"model config of checkpoint {path}")
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from exc


def checkpoint_vocabulary(payload: Mapping[str, Any], path: str | os.PathLike = "checkpoint") -> Vocabulary:
    """The vocabulary stored in a loaded checkpoint."""
    try:
        return Vocabulary.from_dict(payload["vocabulary"], where=f"vocabulary of checkpoint {path}")
    except VocabularyError as exc:
        raise CheckpointError(str(exc)) from exc
