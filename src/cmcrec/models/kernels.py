"""Fused CPU kernels, compiled on this machine the first time they are needed.

MCCL's edge scorer runs a one-hidden-layer MLP over every rating of a batch
(about 200,000 rows at IGMC's ML-100K settings, three times a step). In
PyTorch that is an ``(M, H)`` gather, a ReLU, a product, and in the backward a
mask and two sparse products over another ``(M, H)`` buffer.
``csrc/cpu_kernels.cpp`` does each direction in one pass over the rows,
without the buffer (see :class:`cmcrec.models.layers.EdgeScorer`). It also
holds the scorers' per-subgraph rescaling, the paired batch graph's counting
sort, edge dropout's recount and the per-rating scorer rows
(:class:`cmcrec.models.layers.RelationalGraph`; ``docs/ARCHITECTURE.md``), and
subgraph extraction's scan of the selected users' ratings
(:func:`cmcrec.graph.subgraph.extract_subgraphs`).

The source is compiled with :func:`torch.utils.cpp_extension.load` (a C++
compiler and ``ninja`` are needed; both are in the default Linux set-up) into
the user cache folder (``$CMCREC_KERNEL_CACHE`` moves it), once per source,
PyTorch, Python and CPU, and loaded from there afterwards. ``-march=native`` lets the compiler vectorise the branch-free
loops for this CPU; the CPU's feature flags are part of the cache key, so a
shared home folder never loads a build made for another CPU.

When the build fails (no compiler, another platform) the layers fall back to
the PyTorch path with one warning; ``CMCREC_CPU_KERNELS=0`` skips the attempt.
The kernels are deterministic for any thread count and agree with the PyTorch
path to float rounding (``tests/test_kernels.py``).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import platform
import shutil
import sys
import time
import warnings
from pathlib import Path
from types import ModuleType

import torch

__all__ = ["KERNELS_ENV", "cpu_kernels", "kernel_cache_dir"]

KERNELS_ENV = "CMCREC_CPU_KERNELS"
_SOURCE = Path(__file__).with_name("csrc") / "cpu_kernels.cpp"
_CFLAGS = ["-O3", "-march=native", "-fopenmp"]
_LDFLAGS = ["-fopenmp"]
# A build unused this long (another source, PyTorch or Python) is deleted when a process loads its own.
STALE_BUILD_SECONDS = 30 * 24 * 3600

log = logging.getLogger(__name__)

_module: ModuleType | None = None
_tried = False


def _cpu_fingerprint() -> str:
    """The CPU's model and feature flags (Linux), else the platform's processor string."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            keep = [line for line in f if line.startswith(("flags", "model name"))]
        return "".join(sorted(set(keep)))
    except OSError:
        return platform.processor() or platform.machine()


def kernel_cache_dir() -> Path:
    """Where builds go: ``$CMCREC_KERNEL_CACHE``, else ``<user cache>/cmcrec/kernels``."""
    env = os.environ.get("CMCREC_KERNEL_CACHE")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_cache_dir("cmcrec")) / "kernels"


def _build_name() -> str:
    key = "\n".join(
        [_SOURCE.read_text(encoding="utf-8"), torch.__version__, sys.version, " ".join(_CFLAGS), _cpu_fingerprint()]
    )
    return "cmcrec_cpu_" + hashlib.sha256(key.encode()).hexdigest()[:16]


@contextlib.contextmanager
def _ninja_on_path():
    """PyTorch's builder runs ``ninja`` from ``PATH``. The ``ninja`` package installs it beside the
    environment's Python, which is off ``PATH`` when a virtual environment is used without being
    activated (``.venv/bin/cmcrec ...``): put it there for the build, then restore ``PATH``."""
    old = os.environ.get("PATH")
    if shutil.which("ninja") is None:
        try:
            import ninja

            os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + (old or "")
        except ImportError:
            pass
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("PATH", None)
        else:
            os.environ["PATH"] = old


def cpu_kernels() -> ModuleType | None:
    """The compiled kernels, or ``None`` where they are disabled or cannot be built (warned once)."""
    global _module, _tried
    if _tried:
        return _module
    _tried = True
    if os.environ.get(KERNELS_ENV, "1") == "0":
        return None
    try:
        from torch.utils import cpp_extension

        name = _build_name()
        build_dir = kernel_cache_dir() / name
        build_dir.mkdir(parents=True, exist_ok=True)
        if not (build_dir / f"{name}.so").exists():
            log.warning("compiling cmcrec's fused CPU kernels into %s (once, about 30 s)", build_dir)
        with _ninja_on_path():
            _module = cpp_extension.load(
                name,
                [str(_SOURCE)],
                build_directory=str(build_dir),
                extra_cflags=_CFLAGS,
                extra_ldflags=_LDFLAGS,
                verbose=False,
            )
        _mark_used_and_prune(build_dir)
    except Exception as err:  # any build or load failure means: use the PyTorch path
        warnings.warn(
            f"cmcrec: the fused CPU kernels could not be built or loaded ({type(err).__name__}: {err}); "
            f"using the PyTorch path, which is slower. Set {KERNELS_ENV}=0 to skip the attempt.",
            RuntimeWarning,
            stacklevel=2,
        )
        _module = None
        # Processes started from this one (spawned DataLoader workers) inherit the environment: they skip
        # the build this process could not make instead of each retrying it and warning again.
        os.environ[KERNELS_ENV] = "0"
    return _module


def _mark_used_and_prune(build_dir: Path, now: float | None = None) -> None:
    """Stamp ``build_dir`` as used now and delete its sibling builds unused for
    :data:`STALE_BUILD_SECONDS`: each cmcrec upgrade or new PyTorch leaves a build behind,
    while a build another environment still uses (a second venv on this machine) stays."""
    now = time.time() if now is None else now
    with contextlib.suppress(OSError):
        os.utime(build_dir, (now, now))
    try:
        siblings = [p for p in build_dir.parent.glob("cmcrec_cpu_*") if p.is_dir() and p != build_dir]
    except OSError:
        return
    for old in siblings:
        with contextlib.suppress(OSError):
            if now - old.stat().st_mtime > STALE_BUILD_SECONDS:
                shutil.rmtree(old, ignore_errors=True)
