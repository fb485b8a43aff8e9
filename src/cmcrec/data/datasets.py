"""Named datasets: where their files live and how to load and split them.

A dataset ``name`` lives in ``<data_dir>/<name>/`` with the files its source
publishes (the layout of the project's shared data folder). The data directory
is, in order: the ``data_dir`` argument, the ``CMCREC_DATA_DIR`` environment
variable, or the user cache folder (``platformdirs.user_cache_dir("cmcrec")``).

``movietweetings-100k`` is embedded in the package (MIT licence), so it loads
with no data directory at all. ``ml-100k`` can be downloaded from GroupLens with
``download=True`` (SHA-256 checked). The Monti et al. matrices (douban,
flixster, yahoo_music) must be placed in the data directory by hand.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from os import PathLike
from pathlib import Path

import numpy as np

from cmcrec.data import loaders
from cmcrec.data.download import download_ml100k
from cmcrec.data.ratings import Ratings, RatingScale, Split
from cmcrec.data.splits import SPLIT_METHODS, make_split
from cmcrec.errors import ConfigError, DataError

PathArg = str | PathLike[str]

#: Environment variable naming the data directory.
DATA_DIR_ENV = "CMCREC_DATA_DIR"
#: Default number of buckets for YahooMusic's 1–100 scale.
YAHOO_BUCKETS = 10
_MONTI_FILE = "training_test_dataset.mat"
_EMBEDDED = "_embedded"


@dataclass(frozen=True)
class DatasetSpec:
    """What cmcrec knows about one named dataset.

    Attributes:
        name: registry name, also its folder name.
        description: one line for listings.
        scale: rating scale (for YahooMusic, with the default bucketing).
        canonical_splits: splits that ship with the files; the first is the default.
        files: files that must exist in the dataset folder.
        source: where to get it.
        embedded: whether a copy ships inside the package.
        downloadable: whether ``download=True`` can fetch it.
        timestamps: whether its ratings carry timestamps (needed by ``temporal``).
    """

    name: str
    description: str
    scale: RatingScale
    canonical_splits: tuple[str, ...]
    files: tuple[str, ...]
    source: str
    embedded: bool = False
    downloadable: bool = False
    timestamps: bool = True

    @property
    def default_split(self) -> str:
        return self.canonical_splits[0] if self.canonical_splits else "random"

    @property
    def split_names(self) -> tuple[str, ...]:
        methods = SPLIT_METHODS if self.timestamps else tuple(m for m in SPLIT_METHODS if m != "temporal")
        return (*self.canonical_splits, *methods)


_MONTI_SOURCE = "Monti et al. (NeurIPS 2017), https://github.com/fmonti/mgcnn (training_test_dataset.mat)"

DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec(
            "ml-100k",
            "MovieLens 100K: 100,000 ratings (1-5) by 943 users on 1,682 movies",
            loaders.ML100K_SCALE,
            loaders.ML100K_SPLITS,
            ("u.data", "u.item", "u.genre"),
            "GroupLens, https://files.grouplens.org/datasets/movielens/ml-100k.zip (download=True)",
            downloadable=True,
        ),
        DatasetSpec(
            "douban",
            "Douban (Monti et al.): 3,000 x 3,000 users x movies, ratings 1-5",
            RatingScale.from_range(1, 5),
            ("monti",),
            (_MONTI_FILE,),
            _MONTI_SOURCE,
            timestamps=False,
        ),
        DatasetSpec(
            "flixster",
            "Flixster (Monti et al.): 3,000 x 3,000 users x movies, ratings 0.5-5 in half stars",
            RatingScale.from_range(0.5, 5, 0.5),
            ("monti",),
            (_MONTI_FILE,),
            _MONTI_SOURCE,
            timestamps=False,
        ),
        DatasetSpec(
            "yahoo_music",
            f"YahooMusic (Monti et al.): 3,000 x 3,000 users x songs, ratings 1-100 "
            f"in {YAHOO_BUCKETS} buckets (num_buckets=...)",
            RatingScale.from_range(1, 100).with_buckets(YAHOO_BUCKETS),
            ("monti",),
            (_MONTI_FILE,),
            _MONTI_SOURCE,
            timestamps=False,
        ),
        DatasetSpec(
            "movietweetings-100k",
            "MovieTweetings 100K: 100,000 ratings (0-10) by 16,554 users on 10,506 movies; cold-start heavy",
            loaders.MOVIETWEETINGS_SCALE,
            (),
            ("ratings.dat", "movies.dat"),
            "Simon Dooms, https://github.com/sidooms/MovieTweetings (MIT); embedded in cmcrec",
            embedded=True,
        ),
    )
}


def resolve_data_dir(data_dir: PathArg | None = None) -> Path:
    """The data directory: ``data_dir``, else ``$CMCREC_DATA_DIR``, else the user cache folder."""
    if data_dir is not None:
        return Path(data_dir).expanduser()
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("cmcrec"))


def _spec(name: str) -> DatasetSpec:
    try:
        return DATASETS[name]
    except KeyError:
        raise DataError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}") from None


def _present(spec: DatasetSpec, folder: Path) -> bool:
    return all((folder / f).is_file() for f in spec.files)


@contextmanager
def _embedded_folder(name: str) -> Iterator[Path]:
    with resources.as_file(resources.files("cmcrec.data") / _EMBEDDED / name) as folder:
        yield folder


def _locate(spec: DatasetSpec, data_dir: PathArg | None, download: bool) -> Path | None:
    """The dataset folder in the data directory, downloading if asked; None if embedded-only."""
    root = resolve_data_dir(data_dir)
    folder = root / spec.name
    if _present(spec, folder):
        return folder
    if spec.embedded:
        return None
    if download and spec.downloadable:
        return download_ml100k(root)
    missing = ", ".join(f for f in spec.files if not (folder / f).is_file())
    how = (
        f"fetch it with `cmcrec data download {spec.name}` (or download=True)"
        if spec.downloadable
        else f"get it from {spec.source} and put it there"
    )
    raise DataError(
        f"dataset {spec.name!r} is not in the data directory (missing {missing}); {how}, "
        f"or point data_dir / ${DATA_DIR_ENV} at a folder that has it",
        path=folder,
    )


def list_datasets(data_dir: PathArg | None = None) -> list[dict]:
    """Every known dataset as a JSON-ready dict.

    Keys: ``name``, ``description``, ``rating_scale`` (levels, num_buckets),
    ``canonical_splits``, ``default_split``, ``splits`` (all accepted names),
    ``available`` (loadable now without a download), ``location`` (folder, or
    ``"embedded"``, or None), ``source``.
    """
    root = resolve_data_dir(data_dir)
    out = []
    for spec in DATASETS.values():
        folder = root / spec.name
        if _present(spec, folder):
            location: str | None = str(folder)
        elif spec.embedded:
            location = "embedded"
        else:
            location = None
        out.append(
            {
                "name": spec.name,
                "description": spec.description,
                "rating_scale": spec.scale.to_dict(),
                "canonical_splits": list(spec.canonical_splits),
                "default_split": spec.default_split,
                "splits": list(spec.split_names),
                "available": location is not None,
                "location": location,
                "source": spec.source,
            }
        )
    return out


def _is_dataset_name(name_or_path: object) -> bool:
    return isinstance(name_or_path, str) and name_or_path in DATASETS


def _looks_like_path(value: object) -> bool:
    if isinstance(value, PathLike):
        return True
    text = str(value)
    return os.sep in text or "/" in text or Path(text).suffix != "" or Path(text).exists()


def _check_buckets(spec: DatasetSpec, num_buckets: int | None) -> None:
    """``num_buckets`` applies to a dataset whose scale is bucketed (yahoo_music) and nowhere else."""
    if num_buckets is not None and spec.scale.num_buckets is None:
        raise ConfigError(
            f"num_buckets applies to bucketed scales only; {spec.name!r} has levels {spec.scale.levels_text}"
        )


def _monti_scale(spec: DatasetSpec, num_buckets: int | None) -> RatingScale:
    """The scale to read a Monti file with (``num_buckets`` already checked by the public loaders)."""
    return spec.scale if num_buckets is None else spec.scale.with_buckets(num_buckets)


def _load_dataset(spec: DatasetSpec, folder: Path | None, num_buckets: int | None) -> Ratings:
    if spec.name == "ml-100k":
        return loaders.read_movielens_100k(folder, name=spec.name)
    if spec.name == "movietweetings-100k":
        if folder is not None:
            return loaders.read_movietweetings(folder / "ratings.dat", folder / "movies.dat", name=spec.name)
        with _embedded_folder(spec.name) as emb:
            return loaders.read_movietweetings(emb / "ratings.dat.gz", emb / "movies.dat.gz", name=spec.name)
    split = _load_monti(spec, folder, num_buckets)
    return split.train.concat(split.test, name=spec.name)


def _load_monti(spec: DatasetSpec, folder: Path, num_buckets: int | None) -> Split:
    return loaders.read_monti_mat(
        folder / _MONTI_FILE, scale=_monti_scale(spec, num_buckets), name=spec.name, split_name="monti"
    )


def load_ratings(
    name_or_path: PathArg,
    data_dir: PathArg | None = None,
    *,
    download: bool = False,
    num_buckets: int | None = None,
    **table_options,
) -> Ratings:
    """All ratings of a named dataset, or of a ratings file.

    Args:
        name_or_path: a dataset name (see :func:`list_datasets`) or the path of a
            delimited text / Parquet file.
        data_dir: the data directory (default: ``$CMCREC_DATA_DIR``, else the
            user cache folder).
        download: fetch a missing downloadable dataset (ml-100k).
        num_buckets: for a bucketed scale (yahoo_music, default 10) the number
            of buckets; for a file, the buckets used if its scale is inferred
            with too many levels.
        **table_options: for a file, options of :func:`cmcrec.data.loaders.read_table`
            (``columns``, ``delimiter``, ``header``, ``scale``, ``duplicates``, ...).

    Raises:
        DataError: unknown dataset name (the message lists the known ones), a
            missing dataset or file, or a malformed file.
    """
    if _is_dataset_name(name_or_path):
        if table_options:
            raise ConfigError(f"options {sorted(table_options)} apply to files, not to the dataset {name_or_path!r}")
        spec = _spec(str(name_or_path))
        _check_buckets(spec, num_buckets)
        return _load_dataset(spec, _locate(spec, data_dir, download), num_buckets)
    if _looks_like_path(name_or_path):
        if num_buckets is not None:
            table_options["num_buckets"] = num_buckets
        return loaders.read_table(name_or_path, **table_options)
    raise DataError(
        f"unknown dataset {str(name_or_path)!r}; known datasets: {', '.join(DATASETS)} "
        "(or give the path of a ratings file)"
    )


def load_split(
    name: PathArg,
    split: str | None = None,
    data_dir: PathArg | None = None,
    seed: int = 0,
    test_fraction: float = 0.2,
    *,
    download: bool = False,
    num_buckets: int | None = None,
    **table_options,
) -> Split:
    """A train/test split of a named dataset (or of a ratings file).

    Args:
        name: dataset name or file path.
        split: ``None`` or ``"canonical"`` for the dataset's canonical split
            (ml-100k ``u1``; douban/flixster/yahoo_music their ``monti``
            train/test masks; movietweetings-100k and files ``random``);
            ``u1``..``u5``, ``ua``, ``ub`` for ml-100k; ``"random"`` (seeded
            holdout of ``test_fraction``) or ``"temporal"`` (per-user
            leave-last-out by timestamp) for any dataset with the data for it.
        data_dir: the data directory.
        seed: seed of the random split.
        test_fraction: held-out share of the random split.
        download: fetch a missing downloadable dataset (ml-100k).
        num_buckets: see :func:`load_ratings`.
        **table_options: see :func:`load_ratings`.

    Raises:
        DataError: unknown dataset or split name (the message lists the valid
            ones), or a temporal split of data without timestamps.
    """
    if not _is_dataset_name(name):
        if not _looks_like_path(name):
            _spec(str(name))  # raises, listing the known names
        ratings = load_ratings(name, data_dir, num_buckets=num_buckets, **table_options)
        method = "random" if split in (None, "canonical") else split
        if method not in SPLIT_METHODS:
            raise DataError(
                f"unknown split {method!r} for a ratings file; choose one of {', '.join(SPLIT_METHODS)}",
                field="split",
            )
        return make_split(ratings, method, rng=np.random.default_rng(seed), test_fraction=test_fraction)

    if table_options:
        raise ConfigError(f"options {sorted(table_options)} apply to files, not to the dataset {name!r}")
    spec = _spec(str(name))
    _check_buckets(spec, num_buckets)
    split = spec.default_split if split in (None, "canonical") else split
    if split not in spec.split_names:
        raise DataError(
            f"unknown split {split!r} for dataset {spec.name!r}; choose one of "
            f"{', '.join(spec.split_names)} (or 'canonical')",
            field="split",
        )
    folder = _locate(spec, data_dir, download)
    canonical: dict[str, Callable[[], Split]] = {}
    if spec.name == "ml-100k":
        canonical = {s: (lambda s=s: loaders.read_movielens_100k_split(folder, s)) for s in spec.canonical_splits}
    elif spec.canonical_splits == ("monti",):
        canonical = {"monti": lambda: _load_monti(spec, folder, num_buckets)}
    if split in canonical:
        return canonical[split]()
    ratings = _load_dataset(spec, folder, num_buckets)
    return make_split(ratings, split, rng=np.random.default_rng(seed), test_fraction=test_fraction)
