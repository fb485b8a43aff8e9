"""Files on disk: atomic writes, safetensors + JSON state, never pickle.

Model artifacts and training checkpoints are tensors in ``.safetensors`` files
and everything else in JSON. Nested state (an optimiser's ``state_dict``, RNG
states) is flattened: each tensor goes to the safetensors file under a path-like
key and the JSON keeps a ``{"__tensor__": key}`` reference in its place, so a
checkpoint can be loaded without unpickling anything.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from cmcrec.errors import ArtifactError


def _umask_mode(mode: int) -> int:
    """``mode`` less the process umask (mkstemp/mkdtemp create 0600/0700; results are meant to be read)."""
    mask = os.umask(0)
    os.umask(mask)
    return mode & ~mask


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file in the same folder and a rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, _umask_mode(0o666))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_save_tensors(
    path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> None:
    """``safetensors`` save through a temporary file and a rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=metadata)
        os.chmod(tmp, _umask_mode(0o666))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: missing tensor file")
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for damaged files
        raise ArtifactError(f"{path}: cannot read safetensors file ({e})") from None


def read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: missing file")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
    except UnicodeDecodeError as e:
        raise ArtifactError(f"{path}: not UTF-8 text (byte {e.start}); not a cmcrec file") from None
    except OSError as e:
        raise ArtifactError(f"{path}: cannot read: {e.strerror or e}") from None


def _aside_prefix(final: Path) -> str:
    """Name prefix of the folder :func:`atomic_directory` moves an existing artifact to while replacing it."""
    return f".{final.name}.old-"


@contextmanager
def atomic_directory(final: str | Path) -> Iterator[Path]:
    """Build a directory in a temporary sibling; move it into place only on success.

    An existing directory at ``final`` is replaced as a whole, so readers see the
    old artifact or the new one, never a mixture; on error nothing is left behind.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp"))
    try:
        yield tmp
        os.chmod(tmp, _umask_mode(0o777))
        if final.exists():
            # A fresh name: a leftover from a crashed process (whose pid may repeat) cannot block it.
            old = final.with_name(f"{_aside_prefix(final)}{uuid.uuid4().hex}")
            os.replace(final, old)
            try:
                os.replace(tmp, final)
            except BaseException:
                os.replace(old, final)  # put the previous artifact back
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def recover_directory(final: str | Path) -> bool:
    """Put back the artifact :func:`atomic_directory` had moved aside when a crash came between its
    two renames (``final`` missing, ``.NAME.old-*`` present). Returns whether it did."""
    final = Path(final)
    if final.exists():
        return False
    aside = sorted(final.parent.glob(f"{_aside_prefix(final)}*"), key=lambda p: p.stat().st_mtime)
    if not aside:
        return False
    os.replace(aside[-1], final)
    return True


def flatten_state(obj: Any, prefix: str = "s") -> tuple[Any, dict[str, torch.Tensor]]:
    """Split nested state into a JSON-able skeleton and a flat dict of tensors.

    Dicts keep their key types (optimiser state is keyed by int), NumPy arrays
    become tensors marked to come back as arrays.
    """
    tensors: dict[str, torch.Tensor] = {}

    def walk(x: Any, path: str) -> Any:
        if isinstance(x, torch.Tensor):
            tensors[path] = x.detach().cpu().contiguous()
            return {"__tensor__": path}
        if isinstance(x, np.ndarray):
            tensors[path] = torch.from_numpy(np.ascontiguousarray(x))
            return {"__ndarray__": path}
        if isinstance(x, dict):
            return {
                "__dict__": [[walk(k, f"{path}.k{i}"), walk(v, f"{path}.{i}")] for i, (k, v) in enumerate(x.items())]
            }
        if isinstance(x, tuple):
            return {"__tuple__": [walk(v, f"{path}.{i}") for i, v in enumerate(x)]}
        if isinstance(x, list):
            return [walk(v, f"{path}.{i}") for i, v in enumerate(x)]
        if isinstance(x, np.generic):
            return x.item()
        if x is None or isinstance(x, bool | int | float | str):
            return x
        raise TypeError(f"cannot serialise {type(x).__name__} at {path}")

    return walk(obj, prefix), tensors


def unflatten_state(skeleton: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of :func:`flatten_state`."""

    def walk(x: Any) -> Any:
        if isinstance(x, dict):
            if "__tensor__" in x:
                return tensors[x["__tensor__"]]
            if "__ndarray__" in x:
                return tensors[x["__ndarray__"]].numpy()
            if "__dict__" in x:
                return {_hashable(walk(k)): walk(v) for k, v in x["__dict__"]}
            if "__tuple__" in x:
                return tuple(walk(v) for v in x["__tuple__"])
            raise ArtifactError(f"unexpected object in state file: keys {sorted(x)}")
        if isinstance(x, list):
            return [walk(v) for v in x]
        return x

    return walk(skeleton)


def _hashable(k: Any) -> Any:
    return tuple(k) if isinstance(k, list) else k


def save_state(directory: str | Path, name: str, state: Any) -> None:
    """Save nested state as ``<name>.safetensors`` + ``<name>.json`` (both atomic)."""
    directory = Path(directory)
    skeleton, tensors = flatten_state(state)
    atomic_save_tensors(directory / f"{name}.safetensors", tensors)
    atomic_write_text(directory / f"{name}.json", json.dumps(skeleton))


def load_state(directory: str | Path, name: str) -> Any:
    directory = Path(directory)
    return unflatten_state(read_json(directory / f"{name}.json"), load_tensors(directory / f"{name}.safetensors"))
