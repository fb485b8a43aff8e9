"""Named config presets: what a laptop user or a paper reproduction should start from.

A preset is a set of config overrides for the subgraph models (IGMC, MCCL and
its ablations): the budget they trade is subgraph size and epochs. Id-based
models (MF, bias) train in seconds and keep their own defaults under any preset.
"""

from __future__ import annotations

from typing import Any

from cmcrec.errors import ConfigError

PRESETS: dict[str, dict[str, Any]] = {
    # The reference recipe (DESIGN §1): 60 epochs, 100 / 200 neighbours per hop.
    "paper": {"epochs": 60, "max_nodes_per_hop": 100, "eval_max_nodes_per_hop": 200, "lr_decay_step": 10},
    # A laptop budget: fewer epochs, smaller subgraphs, bigger batches; stops early on validation.
    "cpu": {
        "epochs": 8,
        "max_nodes_per_hop": 40,
        "eval_max_nodes_per_hop": 80,
        "batch_size": 128,
        "lr": 2e-3,
        "lr_decay_step": 2,
        "lr_decay_factor": 0.8,
        "patience": 3,
    },
}


def preset_overrides(name: str, fields: set[str] | None = None) -> dict[str, Any]:
    """Overrides of preset ``name`` for a config with ``fields``: none for configs
    without subgraph settings (``max_nodes_per_hop``)."""
    if name not in PRESETS:
        raise ConfigError(f"--preset: unknown preset {name!r}; known: {', '.join(PRESETS)}")
    if fields is not None and "max_nodes_per_hop" not in fields:
        return {}
    return {k: v for k, v in PRESETS[name].items() if fields is None or k in fields}
