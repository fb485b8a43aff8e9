"""The Recommender: ids in, predictions and top-K lists out; fit, save and load.

This is the object library users, the CLI and the HTTP service share. It owns
the id ↔ index vocabularies, the training graph (subgraph models read it at
prediction time), the candidate generator, and the artifact format:

``DIR/manifest.json``           format version, model name, config, data spec, training history
``DIR/model.safetensors``       the module's weights
``DIR/train_ratings.safetensors``  the training ratings (user, item, rating) by index
``DIR/vocab.json``              user and item ids, item titles and genres

Unknown-id policy: a user or item id absent from the training vocabulary raises
:class:`~cmcrec.errors.UnknownIdError` naming it. A user with no ratings at all
is a new user: call :meth:`recommend_for_ratings` with their ratings.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cmcrec._version import __version__
from cmcrec.artifacts import (
    atomic_directory,
    atomic_save_tensors,
    atomic_write_text,
    load_tensors,
    read_json,
    recover_directory,
)
from cmcrec.candidates import ItemKNNCandidates
from cmcrec.config import RunContext, TrainConfig
from cmcrec.data.ratings import Ratings, RatingScale, Vocabulary
from cmcrec.errors import ArtifactError, CmcrecError
from cmcrec.models.base import RatingModel
from cmcrec.models.registry import DataSpec, get_model
from cmcrec.training.batching import fit_batchers, make_batcher
from cmcrec.training.selection import choose_eval_cap
from cmcrec.training.trainer import EpochRecord, Trainer, TrainResult, predict_rows, resolve_device, validation_error

FORMAT = "cmcrec-model"
FORMAT_VERSION = 1
DEFAULT_CANDIDATES = 200


@dataclass
class Recommendation:
    """One recommended item."""

    item: str
    score: float
    title: str | None = None
    genres: tuple[str, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"item": self.item, "score": self.score}
        if self.title is not None:
            d["title"] = self.title
        if self.genres is not None:
            d["genres"] = list(self.genres)
        return d


def carve_validation(train: Ratings, config: TrainConfig, seed: int) -> tuple[Ratings, Ratings]:
    """``(fit, valid)``: the validation share of ``train`` a run with ``seed`` selects its epoch on
    (``config.valid_fraction`` of it, drawn with the seed), and the ratings left to fit."""
    from cmcrec.data.splits import validation_split

    return validation_split(train, config.valid_fraction, np.random.default_rng([seed, 101]))


class Recommender:
    """A trained model with its data context.

    Args:
        model_name: registry name (``mf``, ``igmc``, ``mccl``, ...).
        config: the model's config.
        module: the trained module.
        train: the training ratings the model predicts from (its vocabularies are the model's).
        training: the training summary (history, best epoch), if any.
        device: where to run predictions.
        data: the shapes the module was built with (defaults to those of ``train``).
    """

    def __init__(
        self,
        model_name: str,
        config: TrainConfig,
        module: RatingModel,
        train: Ratings,
        training: dict | None = None,
        device: str = "cpu",
        data: DataSpec | None = None,
    ) -> None:
        self.model_name = model_name
        self.config = config
        self.device = resolve_device(device)
        self.module = module.to(self.device).eval()
        self.train = train
        self.training = training or {}
        # The shapes the module was built with (its global mean is the fitting share's).
        self.data = data or DataSpec.from_ratings(train)
        self._graph = None
        self._candidates: ItemKNNCandidates | None = None
        self._batcher = None
        self._seen = train.csr()

    # -- construction ----------------------------------------------------------------------------------

    @classmethod
    def fit(
        cls,
        model: str,
        train: Ratings,
        config: TrainConfig | Mapping[str, Any] | None = None,
        context: RunContext | None = None,
        checkpoint_dir: str | Path | None = None,
        resume: bool = False,
        log: Callable[[EpochRecord], None] | None = None,
    ) -> Recommender:
        """Train ``model`` on ``train``; the best epoch is chosen on a validation share of ``train``.

        Args:
            model: registry name.
            train: training ratings. ``config.valid_fraction`` of them is carved off for validation.
            config: a config object, or overrides for the preset's defaults.
            context: device, workers, seed, rank.
            checkpoint_dir: write a checkpoint there after every epoch.
            resume: continue from the checkpoint in ``checkpoint_dir``.
            log: called with each epoch's record (rank 0).
        """
        from cmcrec.graph.csr import RatingGraph

        spec = get_model(model)
        if config is None or isinstance(config, Mapping):
            config = spec.make_config(dict(config or {}))
        context = context or RunContext()
        if len(train) < 2:
            raise CmcrecError(f"{train.name}: need at least 2 training ratings, got {len(train)}")
        fit_part, valid = carve_validation(train, config, context.seed)
        if len(valid) == 0 or len(fit_part) == 0:
            raise CmcrecError(
                f"{train.name}: valid_fraction={config.valid_fraction} of {len(train)} ratings leaves "
                f"{len(fit_part)} to fit and {len(valid)} to validate; both need at least one "
                "(use more ratings or change valid_fraction)"
            )
        data = DataSpec.from_ratings(fit_part)
        torch.manual_seed(context.seed)
        module = spec.build(config, data)
        trainer = Trainer(module, config, context, checkpoint_dir=checkpoint_dir)
        if resume:
            if checkpoint_dir is not None:
                recover_directory(checkpoint_dir)  # a crash mid-replace left only the previous checkpoint
            if checkpoint_dir is None or not (Path(checkpoint_dir) / "state.json").is_file():
                raise ArtifactError(f"--resume: no checkpoint found in {checkpoint_dir}")
            trainer.load_checkpoint(checkpoint_dir)
        graph = RatingGraph.from_ratings(fit_part)
        kind = module.batch_kind
        batchers = fit_batchers(kind, config, graph, data, seed=context.seed, rank=context.rank)
        result: TrainResult = trainer.fit(fit_part, valid, *batchers, log=log)
        summary = result.to_dict() | {"num_train": len(fit_part), "num_valid": len(valid), "seed": context.seed}
        # Predictions use every training rating (validation included) as graph context.
        rec = cls(model, config, trainer.model, train, training=summary, device=str(trainer.device), data=data)
        if getattr(config, "select_eval_cap", False):
            rec.choose_eval_cap(context)
        return rec

    def choose_eval_cap(self, context: RunContext | None = None) -> dict[str, Any]:
        """Choose the evaluation cap on this model's validation split and predict with it from now on.

        What ``select_eval_cap`` does when training ends
        (:func:`~cmcrec.training.selection.choose_eval_cap`: the trained cap, twice it, none),
        here also for a model already trained: the validation ratings are carved from
        :attr:`train` with the run's seed exactly as training carved them, and their subgraphs
        are cut from the ratings left to fit, as during training. The weights do not change, so
        the result is what training with ``select_eval_cap`` would have given. Under torchrun
        (``context``) each rank scores its share and the sums are shared, so all ranks choose
        alike. Records the choice in ``training["eval_cap"]`` and returns it.
        """
        from cmcrec.graph.csr import RatingGraph

        context = context or RunContext(progress=False)
        config = self.trained_config
        if not hasattr(config, "eval_max_nodes_per_hop"):
            raise CmcrecError(f"choose_eval_cap: {self.model_name} cuts no subgraphs, so it has no evaluation cap")
        seed = self.training.get("seed")
        if seed is None:
            raise CmcrecError("choose_eval_cap: the model records no training seed, so its validation split is unknown")
        fit_part, valid = carve_validation(self.train, config, seed)
        if self.training.get("num_valid", len(valid)) != len(valid):
            raise CmcrecError(
                f"choose_eval_cap: carved {len(valid)} validation ratings where training used "
                f"{self.training['num_valid']}; the model's training ratings or valid_fraction differ from its run's"
            )
        graph = RatingGraph.from_ratings(fit_part)

        def valid_rmse(cap: int | None) -> float:
            batcher = make_batcher(
                self.module.batch_kind, config.replace(eval_max_nodes_per_hop=cap), graph, train=False, seed=0
            )
            return validation_error(self.module, batcher, valid, config.batch_size * 2, self.device, context)[0]

        choice = choose_eval_cap(config.eval_max_nodes_per_hop, valid_rmse)
        self.training["eval_cap"] = choice
        self.config = self.config.replace(eval_max_nodes_per_hop=choice["chosen"], select_eval_cap=True)
        self._batcher = None
        return choice

    def reset_eval_cap(self) -> None:
        """Undo :meth:`choose_eval_cap`: predict with the cap training validated with again."""
        self.config = self.trained_config
        if hasattr(self.config, "select_eval_cap"):
            self.config = self.config.replace(select_eval_cap=False)
        self.training.pop("eval_cap", None)
        self._batcher = None

    def apply_select_eval_cap(self, select: bool, context: RunContext | None = None) -> None:
        """Set the model up as ``select_eval_cap=select`` asks: the cap chosen on validation
        (kept if already chosen, else chosen now), or the one training validated with."""
        if not select:
            self.reset_eval_cap()
        elif "eval_cap" not in self.training:
            self.choose_eval_cap(context)

    @property
    def trained_config(self) -> TrainConfig:
        """The config training was asked for: :attr:`config`, with an evaluation cap chosen on
        validation (``select_eval_cap``) put back to the one training validated with."""
        choice = self.training.get("eval_cap")
        if not choice:
            return self.config
        return self.config.replace(eval_max_nodes_per_hop=choice["trained_with"])

    # -- ids -------------------------------------------------------------------------------------------

    @property
    def users(self) -> Vocabulary:
        return self.train.users

    @property
    def items(self) -> Vocabulary:
        return self.train.items

    @property
    def graph(self):
        if self._graph is None:
            from cmcrec.graph.csr import RatingGraph

            self._graph = RatingGraph.from_ratings(self.train)
        return self._graph

    @property
    def candidate_generator(self) -> ItemKNNCandidates:
        if self._candidates is None:
            self._candidates = ItemKNNCandidates(self.train)
        return self._candidates

    def item_info(self, item_index: int) -> dict[str, Any]:
        item = str(self.items.ids[item_index])
        info: dict[str, Any] = {"item": item, "num_ratings": int(self._seen.getcol(item_index).nnz)}
        if self.train.item_titles is not None and item in self.train.item_titles:
            info["title"] = self.train.item_titles[item]
        if self.train.item_genres is not None and item in self.train.item_genres:
            info["genres"] = list(self.train.item_genres[item])
        return info

    def _recommendations(self, items: np.ndarray, scores: np.ndarray) -> list[Recommendation]:
        out = []
        for i, s in zip(items, scores, strict=True):
            item = str(self.items.ids[i])
            out.append(
                Recommendation(
                    item=item,
                    score=float(s),
                    title=self.train.title(item),
                    genres=None if self.train.item_genres is None else self.train.item_genres.get(item),
                )
            )
        return out

    # -- prediction ------------------------------------------------------------------------------------

    def predict_indices(
        self, users: np.ndarray, items: np.ndarray, graph=None, batch_size: int = 512, num_workers: int = 0
    ) -> np.ndarray:
        """Predicted ratings ``(n,)`` for index pairs (``graph``: score in this graph instead of the training one)."""
        if graph is None:
            if self._batcher is None:  # built once; evaluation batchers are stateless
                self._batcher = make_batcher(self.module.batch_kind, self.config, self.graph, train=False, seed=0)
            batcher = self._batcher
        else:
            batcher = make_batcher(self.module.batch_kind, self.config, graph, train=False, seed=0)
        return predict_rows(
            self.module,
            batcher,
            np.asarray(users),
            np.asarray(items),
            batch_size=batch_size,
            device=self.device,
            num_workers=num_workers,
        )

    def predict(self, user: object, items: Sequence[object]) -> np.ndarray:
        """Predicted ratings of ``user`` for ``items`` (ids), on the dataset's scale."""
        u = self.users.index(user)
        idx = self.items.lookup(items)
        return self.predict_indices(np.full(len(idx), u, np.int64), idx)

    def _seen_items(self, u: int) -> np.ndarray:
        return self._seen.indices[self._seen.indptr[u] : self._seen.indptr[u + 1]]

    def _seen_ratings(self, u: int) -> np.ndarray:
        return self._seen.data[self._seen.indptr[u] : self._seen.indptr[u + 1]]

    def rank(self, users: np.ndarray, k: int, candidates: int | None = DEFAULT_CANDIDATES) -> np.ndarray:
        """Top-``k`` unseen item indices ``(len(users), k)`` (−1 padded) — the evaluation harness's Ranker.

        Id-based models with a full score matrix score the whole catalogue; subgraph
        models re-rank the top ``candidates`` items of the item-kNN generator, or the
        whole catalogue when ``candidates`` is ``None``.
        """
        users = np.asarray(users, dtype=np.int64)
        hist = [self._seen_items(u) for u in users]
        return self._top_k(users, k, candidates, hist, [self._seen_ratings(u) for u in users], hist)[0]

    def _top_k(
        self,
        users: np.ndarray,
        k: int,
        candidates: int | None,
        hist: list[np.ndarray],
        rats: list[np.ndarray],
        exclude: list[np.ndarray],
        graph=None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` items and their scores, each ``(U, k)``, from one scoring pass.

        Args:
            users: ``(U,)`` user indices (in ``graph`` when given).
            k: list length.
            candidates: items the generator proposes per user; ``None`` scores every item.
            hist, rats: each user's rated items and ratings (what the generator works from).
            exclude: items never to return, per user.
            graph: the graph subgraph models score in (default the training graph).

        Returns:
            ``(items, scores)``: items ``-1`` and scores ``-inf`` where fewer than ``k`` remain.
            Scores are predicted ratings, clipped to the rating scale.
        """
        num_users = len(users)
        score_all = getattr(self.module, "score_all", None) if graph is None else None
        if score_all is not None or candidates is None:
            # A full-catalogue matrix: column j is item j.
            if score_all is not None:
                with torch.no_grad():
                    s = score_all(torch.as_tensor(users, device=self.device)).float().cpu().numpy()
            else:
                s = self.predict_indices(
                    np.repeat(users, self.data.num_items), np.tile(np.arange(self.data.num_items), num_users), graph
                ).reshape(num_users, self.data.num_items)
            for row, ex in enumerate(exclude):
                s[row, ex] = -np.inf
            cand = np.broadcast_to(np.arange(self.data.num_items), s.shape)
        else:
            # The generator proposes unrated items; rated ones that may be returned
            # (recommend(exclude_seen=False)) are appended and compete with them.
            never = [np.union1d(h, e) for h, e in zip(hist, exclude, strict=True)]
            cand = self.candidate_generator.candidates(hist, rats, candidates, exclude=never)
            extra = [np.setdiff1d(h, e) for h, e in zip(hist, exclude, strict=True)]
            width = max((len(x) for x in extra), default=0)
            if width:
                pad = np.full((num_users, width), -1, np.int64)
                for row, x in enumerate(extra):
                    pad[row, : len(x)] = x
                cand = np.concatenate([cand, pad], axis=1)
            s = np.full(cand.shape, -np.inf, np.float32)
            rows, cols = np.nonzero(cand >= 0)
            # Every candidate of every user in one predict call.
            s[rows, cols] = self.predict_indices(users[rows], cand[rows, cols], graph)
        order = np.argsort(-s, axis=1, kind="stable")[:, :k]
        top, top_s = np.take_along_axis(cand, order, axis=1), np.take_along_axis(s, order, axis=1)
        valid = top_s > -np.inf
        items = np.full((num_users, k), -1, np.int64)
        scores = np.full((num_users, k), -np.inf, np.float32)
        items[:, : order.shape[1]] = np.where(valid, top, -1)
        scale = self.train.scale  # score_all is unclamped; predictions are on the scale already
        scores[:, : order.shape[1]] = np.where(valid, np.clip(top_s, scale.minimum, scale.maximum), -np.inf)
        return items, scores

    def recommend(
        self, user: object, k: int = 10, exclude_seen: bool = True, candidates: int | None = DEFAULT_CANDIDATES
    ) -> list[Recommendation]:
        """Top-``k`` items for a training user, best first.

        With ``exclude_seen=False`` the user's rated items compete too (subgraph
        models score the generator's candidates plus the rated items).
        """
        u = self.users.index(user)
        hist, rats = self._seen_items(u), self._seen_ratings(u)
        exclude = hist if exclude_seen else np.zeros(0, np.int64)
        top, scores = self._top_k(np.array([u]), k, candidates, [hist], [rats], [exclude])
        keep = top[0] >= 0
        return self._recommendations(top[0][keep], scores[0][keep])

    def _parse_new_ratings(self, ratings: Mapping[object, float]) -> tuple[np.ndarray, np.ndarray]:
        if not ratings:
            raise CmcrecError("ratings: give at least one (item, rating) pair")
        keys = list(ratings)
        idx = self.items.lookup(keys)
        uniq, counts = np.unique(idx, return_counts=True)
        if (counts > 1).any():
            j = int(uniq[counts > 1][0])
            twice = [k for k, i in zip(keys, idx, strict=True) if i == j]
            raise CmcrecError(f"ratings: item {self.items.ids[j]!r} is rated more than once (as {twice!r})")
        vals = np.asarray([float(v) for v in ratings.values()], dtype=np.float32)
        scale = self.train.scale
        bad = scale.invalid(vals)
        if bad.any():
            item = keys[int(np.nonzero(bad)[0][0])]
            value = ratings[item]
            if scale.minimum <= float(value) <= scale.maximum:  # inside the range, between two levels
                raise CmcrecError(
                    f"ratings: rating {value!r} for item {item!r} is not one of the scale's levels "
                    f"({scale.levels_text})"
                )
            raise CmcrecError(
                f"ratings: rating {value!r} for item {item!r} is outside the scale {scale.minimum:g}..{scale.maximum:g}"
            )
        return idx, vals

    def recommend_for_ratings(
        self, ratings: Mapping[object, float], k: int = 10, candidates: int | None = DEFAULT_CANDIDATES
    ) -> list[Recommendation]:
        """Top-``k`` for a user absent from training, from a few of their ratings — no retraining.

        Subgraph models add the user to the training graph and score their
        enclosing subgraphs directly; id-based models fold the user in.
        """
        idx, vals = self._parse_new_ratings(ratings)
        fold_in = getattr(self.module, "fold_in", None)
        if fold_in is not None:
            bias, factors = fold_in(torch.as_tensor(idx, device=self.device), torch.as_tensor(vals, device=self.device))
            with torch.no_grad():
                m = self.module
                s = m.global_mean + bias + m.item_bias.weight.squeeze(-1)
                if factors.numel():
                    s = s + m.item_factors.weight @ factors
                s = s.clamp(m.rating_min, m.rating_max).cpu().numpy().astype(np.float64)
            s[idx] = -np.inf
            top = np.argsort(-s, kind="stable")[:k]
            top = top[s[top] > -np.inf]
            return self._recommendations(top, s[top])
        graph, u_new = self.graph.with_new_user(
            idx, self.train.scale.relation_type(vals), self.train.scale.normalize(vals).astype(np.float32)
        )
        top, scores = self._top_k(np.array([u_new]), k, candidates, [idx], [vals], [idx], graph=graph)
        keep = top[0] >= 0
        return self._recommendations(top[0][keep], scores[0][keep])

    # -- persistence -----------------------------------------------------------------------------------

    def save(self, directory: str | Path) -> Path:
        """Write the artifact atomically (a half-written directory is never left at ``directory``)."""
        directory = Path(directory)
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "cmcrec_version": __version__,
            "model": self.model_name,
            "config": self.config.to_dict(),
            "data": self.data.to_dict(),
            "dataset": self.train.name,
            "scale": self.train.scale.to_dict(),
            "num_train_ratings": len(self.train),
            "training": self.training,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        vocab = {
            "users": self.users.to_list(),
            "items": self.items.to_list(),
            "item_titles": self.train.item_titles,
            "item_genres": None
            if self.train.item_genres is None
            else {k: list(v) for k, v in self.train.item_genres.items()},
        }
        with atomic_directory(directory) as tmp:
            atomic_save_tensors(tmp / "model.safetensors", self.module.state_dict())
            ratings = {
                "user": torch.from_numpy(self.train.user),
                "item": torch.from_numpy(self.train.item),
                "rating": torch.from_numpy(self.train.rating),
            }
            if self.train.timestamp is not None:
                ratings["timestamp"] = torch.from_numpy(self.train.timestamp)
            atomic_save_tensors(tmp / "train_ratings.safetensors", ratings)
            atomic_write_text(tmp / "vocab.json", json.dumps(vocab))
            atomic_write_text(tmp / "manifest.json", json.dumps(manifest, indent=2))
        return directory

    @classmethod
    def load(cls, directory: str | Path, device: str = "cpu") -> Recommender:
        """Load an artifact written by :meth:`save`; refuses unknown formats and versions."""
        directory = Path(directory)
        if not directory.is_dir():
            raise ArtifactError(f"{directory}: no such model directory")
        manifest = read_json(directory / "manifest.json")
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise ArtifactError(f"{directory / 'manifest.json'}: not a cmcrec model manifest")
        version = manifest.get("format_version")
        if version != FORMAT_VERSION:
            raise ArtifactError(
                f"{directory / 'manifest.json'}: artifact format version {version!r} is not supported by "
                f"cmcrec {__version__} (supports {FORMAT_VERSION}); retrain or use a matching cmcrec version"
            )
        spec = get_model(manifest["model"])
        config = spec.config_cls.from_saved(manifest["config"], source=f"{directory / 'manifest.json'} config")
        vocab = read_json(directory / "vocab.json")
        arrays = load_tensors(directory / "train_ratings.safetensors")
        genres = vocab.get("item_genres")
        train = Ratings(
            user=arrays["user"].numpy(),
            item=arrays["item"].numpy(),
            rating=arrays["rating"].numpy(),
            users=Vocabulary(vocab["users"], "user"),
            items=Vocabulary(vocab["items"], "item"),
            scale=RatingScale.from_dict(manifest["scale"]),
            timestamp=arrays["timestamp"].numpy() if "timestamp" in arrays else None,
            item_titles=vocab.get("item_titles"),
            item_genres=None if genres is None else {k: tuple(v) for k, v in genres.items()},
            name=manifest.get("dataset", "ratings"),
        )
        data = DataSpec(**manifest["data"])
        module = spec.build(config, data)
        try:
            module.load_state_dict(load_tensors(directory / "model.safetensors"))
        except RuntimeError as e:
            raise ArtifactError(f"{directory / 'model.safetensors'}: weights do not match the manifest ({e})") from None
        return cls(
            manifest["model"], config, module, train, training=manifest.get("training"), device=device, data=data
        )
