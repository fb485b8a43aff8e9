"""What every study records: the command, the machine, the date; atomic JSON results."""

from __future__ import annotations

import json
import platform
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cmcrec.artifacts import atomic_write_text
from cmcrec.errors import ConfigError
from cmcrec.training.trainer import comparable_saved_config, training_settings


def machine() -> dict[str, Any]:
    """CPU model, cores, torch version and GPU (if any) of this run."""
    cpu = platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os

    info: dict[str, Any] = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def command_line(args: list[str] | None = None) -> str:
    """The running command as one shell line; ``args`` replaces ``sys.argv[1:]`` (a script's
    ``main(argv)`` called from Python)."""
    argv = [sys.argv[0], *(sys.argv[1:] if args is None else args)]
    if argv[0].endswith(("cmcrec", "__main__.py")):
        argv[0] = "cmcrec"
    elif argv[0].endswith(".py"):  # a benchmark script: not executable by itself
        argv.insert(0, "python")
    return " ".join(shlex.quote(a) for a in argv)


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def load_results(path: Path) -> dict[str, Any]:
    if path.is_file():
        return json.loads(path.read_text())
    return {}


def write_results(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(payload, indent=2) + "\n")


def fit_or_load(model: str, train, config, context, models_dir: Path | None, key: str):
    """Train ``model``, or reuse the artifact ``models_dir/key`` when it was trained with the same config.

    Studies that share a trained model (the accuracy table and the blog table use the
    same seed and config on ML-100K) then train it once; a saved model whose config
    or training data differ is retrained, never silently reused.

    While training, a checkpoint is written to ``models_dir/key.checkpoint`` after every
    epoch, with ``key.checkpoint.json`` beside it naming the config, seed and training data it belongs to.
    A study killed mid-training (a session that ends, a machine that is taken back) then
    resumes at the next epoch when run again with the same config; a checkpoint from a
    different config or data is discarded, never resumed.

    Settings that act only once training has ended (``select_eval_cap``) are not part of
    the match: a reused model is set up as ``config`` asks (the cap chosen on validation,
    or the one training used).
    """
    from cmcrec.recommender import Recommender

    path = None if models_dir is None else Path(models_dir) / key
    if path is not None and (path / "manifest.json").is_file():
        rec = Recommender.load(path, device="cpu" if context.device == "auto" else context.device)
        same_data = len(rec.train) == len(train) and rec.train.digest() == train.digest()
        same_training = training_settings(rec.trained_config) == training_settings(config)
        if same_training and same_data and rec.training.get("seed") == context.seed:
            if hasattr(config, "select_eval_cap"):  # acts after training: set up as this config asks
                rec.apply_select_eval_cap(config.select_eval_cap, context)
            return rec
    if path is None:
        return Recommender.fit(model, train, config, context)
    checkpoint = path.with_name(path.name + ".checkpoint")
    identity_file = path.with_name(path.name + ".checkpoint.json")
    # Through JSON and back, so it compares equal to the copy read from disk (tuples become lists).
    identity = json.loads(
        json.dumps(
            {
                "model": model,
                "config": training_settings(config),
                "seed": context.seed,
                "num_train": len(train),
                "train_digest": train.digest(),
            }
        )
    )
    saved = _read_json(identity_file)
    if isinstance(saved, dict) and isinstance(saved.get("config"), dict):
        # A field added to the config since the checkpoint was written counts as what it meant then.
        saved["config"] = comparable_saved_config(saved["config"], identity["config"], type(config))
    resume = (checkpoint / "state.json").is_file() and saved == identity
    if not resume:
        shutil.rmtree(checkpoint, ignore_errors=True)
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(identity_file, json.dumps(identity, indent=1) + "\n")
    rec = Recommender.fit(model, train, config, context, checkpoint_dir=checkpoint, resume=resume)
    rec.save(path)
    shutil.rmtree(checkpoint, ignore_errors=True)
    identity_file.unlink(missing_ok=True)
    return rec


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def seed_std(values: list[float]) -> float:
    """Sample standard deviation over seeds (ddof=1); 0.0 for a single seed, as the accuracy table shows it."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def require_same_settings(recorded: list[dict[str, Any]], settings: dict[str, Any], out: Path) -> None:
    """Refuse to add runs made with ``settings`` to a results file whose ``recorded`` runs used others.

    A study file skips runs it already holds and averages over seeds; runs with another preset, epoch
    budget, sample or study option would be skipped as done or averaged in. A field an older run does
    not record is not compared.
    """
    now = json.loads(json.dumps(settings, default=str))  # as the file will hold it (tuples → lists)
    for run in recorded:
        diffs = [k for k in sorted(now) if k in run and run[k] != now[k]]
        if diffs:
            said = "; ".join(f"{k} {run[k]!r} there, {now[k]!r} now" for k in diffs[:3])
            raise ConfigError(
                f"{out} holds runs made with other settings ({said}); write these to another --out or delete the file"
            )


def model_label(run: dict[str, Any]) -> str:
    """``model``, or ``model (key=value, ...)`` for a run trained with ``--set`` overrides or with
    ``--num-buckets`` other than the dataset's default (recorded as the run's ``num_buckets``)."""
    overrides = dict(run.get("overrides") or {})
    if run.get("num_buckets") is not None:
        overrides["num_buckets"] = run["num_buckets"]
    if not overrides:
        return run["model"]
    return f"{run['model']} ({', '.join(f'{k}={v}' for k, v in sorted(overrides.items()))})"


def model_key(
    split_name: str,
    model: str,
    overrides: dict[str, Any] | None,
    seed: int,
    preset: str | None = None,
    epochs: int | None = None,
    num_buckets: int | None = None,
) -> str:
    """The ``--models-dir`` name of a trained model: split, model, preset, ``--epochs``, ``--set``
    overrides (less those that act after training, :data:`~cmcrec.training.trainer.POST_TRAINING_FIELDS`:
    runs differing only in them share the trained weights), a bucket count other than the dataset's default,
    seed. Runs that differ in any of them keep their own artifact (before the preset and
    epochs were part of the name, a paper-preset run overwrote the cpu-preset model of the same seed; the
    data digest that guards reuse covers the ratings, not their relation types, so buckets must be named)."""
    tag = "".join(f"-{k}{v}" for k, v in sorted(training_settings(overrides or {}).items()))
    budget = (f"-{preset}" if preset else "") + (f"-e{epochs}" if epochs is not None else "")
    buckets = f"-b{num_buckets}" if num_buckets is not None else ""
    return f"{split_name.replace('/', '-')}-{model}{budget}{buckets}{tag}-s{seed}"
