"""Ratings data: the container, readers, named datasets and splits."""

from cmcrec.data.datasets import (
    DATA_DIR_ENV,
    DATASETS,
    DatasetSpec,
    list_datasets,
    load_ratings,
    load_split,
    resolve_data_dir,
)
from cmcrec.data.download import OFFICIAL_SHA256, OFFICIAL_URL, download_ml100k
from cmcrec.data.loaders import (
    read_monti_mat,
    read_movielens_100k,
    read_movielens_100k_split,
    read_movietweetings,
    read_table,
)
from cmcrec.data.ratings import Ratings, RatingScale, Split, Vocabulary
from cmcrec.data.splits import make_split, random_split, temporal_split, validation_split

__all__ = [
    "DATASETS",
    "DATA_DIR_ENV",
    "DatasetSpec",
    "OFFICIAL_SHA256",
    "OFFICIAL_URL",
    "RatingScale",
    "Ratings",
    "Split",
    "Vocabulary",
    "download_ml100k",
    "list_datasets",
    "load_ratings",
    "load_split",
    "make_split",
    "random_split",
    "read_monti_mat",
    "read_movielens_100k",
    "read_movielens_100k_split",
    "read_movietweetings",
    "read_table",
    "resolve_data_dir",
    "temporal_split",
    "validation_split",
]
