"""Readers and the dataset registry, on tiny files and on the real datasets."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cmcrec.data import (
    DATASETS,
    RatingScale,
    list_datasets,
    load_ratings,
    load_split,
    read_monti_mat,
    read_table,
    resolve_data_dir,
)
from cmcrec.errors import ConfigError


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def rows(r) -> list[tuple[str, str, float]]:
    return [(r.users.ids[u], r.items.ids[i], float(x)) for u, i, x in zip(r.user, r.item, r.rating, strict=True)]


# ----------------------------------------------------------------------------- tables


@pytest.mark.parametrize(
    ("name", "text", "delimiter"),
    [
        ("r.csv", "1,10,4,100\n2,10,5,200\n2,11,3,300\n", None),
        ("r.tsv", "1\t10\t4\t100\n2\t10\t5\t200\n2\t11\t3\t300\n", None),
        ("r.dat", "1::10::4::100\n2::10::5::200\n2::11::3::300\n", None),
        ("r.txt", "1 10 4 100\n2 10 5 200\n2 11 3 300\n", " "),
        ("r.txt", "1|10|4|100\n2|10|5|200\n2|11|3|300\n", None),
    ],
)
def test_read_table_delimiters(tmp_path, name, text, delimiter):
    r = read_table(write(tmp_path / name, text), delimiter=delimiter)
    assert rows(r) == [("1", "10", 4.0), ("2", "10", 5.0), ("2", "11", 3.0)]
    assert r.timestamp.tolist() == [100, 200, 300]
    assert r.scale.levels == (3.0, 4.0, 5.0)  # inferred


def test_read_table_header_mapping_and_explicit_scale(tmp_path):
    path = write(tmp_path / "r.csv", "ts,who,what,stars\n5,a,x,1.5\n6,b,x,2\n7,b,y,0.5\n")
    scale = RatingScale.from_range(0.5, 5, 0.5)
    r = read_table(path, columns={"user": "who", "item": "what", "rating": "stars", "timestamp": "ts"}, scale=scale)
    assert rows(r) == [("a", "x", 1.5), ("b", "x", 2.0), ("b", "y", 0.5)]
    assert r.timestamp.tolist() == [5, 6, 7]
    assert r.scale == scale


def test_read_table_header_aliases_keep_leading_zeros(tmp_path):
    path = write(tmp_path / "r.csv", "userId,movieId,rating\n007,0110912,4\n7,0110912,5\n")
    r = read_table(path, header=True)
    assert r.timestamp is None
    assert rows(r) == [("007", "0110912", 4.0), ("7", "0110912", 5.0)]


def test_read_table_tolerates_blank_lines_and_gzip(tmp_path):
    path = tmp_path / "r.tsv.gz"
    path.write_bytes(gzip.compress(b"1\t10\t4\n\n2\t10\t5\n"))
    r = read_table(path)
    assert rows(r) == [("1", "10", 4.0), ("2", "10", 5.0)]


def test_read_table_parquet(tmp_path):
    path = tmp_path / "r.parquet"
    pd.DataFrame(
        {"user": [1, 2, 2], "item": ["a", "a", "b"], "rating": [1.0, 2.0, 3.0], "timestamp": [1, 2, 3]}
    ).to_parquet(path)
    r = read_table(path)
    assert rows(r) == [("1", "a", 1.0), ("2", "a", 2.0), ("2", "b", 3.0)]
    assert r.timestamp.tolist() == [1, 2, 3]


def test_text_dates_become_unix_seconds(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text(
        "user,item,rating,date\n1,10,4,1970-01-02\n2,10,5,2013-01-01T00:00:01\n3,11,2,1970-01-01T01:00:00+01:00\n"
    )
    assert read_table(path).timestamp.tolist() == [86400, 1356998401, 0]


def test_parquet_zoned_datetimes_become_unix_seconds(tmp_path):
    path = tmp_path / "r.parquet"
    stamps = pd.to_datetime(["1970-01-01T02:00:00+02:00", "1970-01-02T00:00:00+00:00"], utc=True)
    pd.DataFrame({"user": [1, 2], "item": [3, 3], "rating": [1.0, 2.0], "timestamp": stamps}).to_parquet(path)
    assert read_table(path).timestamp.tolist() == [0, 86400]


def test_integer_like_ids_sort_numerically_and_others_do_not_crash():
    from cmcrec.data.ratings import Vocabulary

    vocab, codes = Vocabulary.encode(["10", "-2", "3"])
    assert vocab.to_list() == ["-2", "3", "10"]
    assert codes.tolist() == [2, 0, 1]
    vocab, _ = Vocabulary.encode(["--5", "3", "\u00b2"])  # not integers for int(): sorted as text
    assert vocab.to_list() == ["--5", "3", "\u00b2"]


def test_duplicates_last_uses_timestamp_then_file_order(tmp_path):
    path = write(tmp_path / "r.csv", "1,10,4,200\n1,10,2,100\n2,10,5,1\n2,10,3,1\n1,11,1,5\n")
    r = read_table(path, duplicates="last")
    assert sorted(rows(r)) == [("1", "10", 4.0), ("1", "11", 1.0), ("2", "10", 3.0)]
    assert len(r) == 3


def test_duplicates_mean(tmp_path):
    path = write(tmp_path / "r.csv", "1,10,4,200\n1,10,2,100\n1,11,1,5\n2,11,5,6\n")
    r = read_table(path, duplicates="mean", scale=RatingScale.from_range(1, 5))
    assert rows(r) == [("1", "10", 3.0), ("1", "11", 1.0), ("2", "11", 5.0)]
    assert r.timestamp.tolist() == [200, 5, 6]


def test_bad_duplicate_policy_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="duplicates"):
        read_table(write(tmp_path / "r.csv", "1,2,3\n1,3,4\n"), duplicates="first")


def test_monti_mat_is_transposed_back(tmp_path):
    h5py = pytest.importorskip("h5py")
    m = np.zeros((2, 3))  # 2 users x 3 items, as MATLAB holds it
    m[0, 2], m[1, 0], m[1, 1] = 5, 3, 1
    train = np.zeros_like(m)
    train[0, 2] = train[1, 0] = 1
    test = np.zeros_like(m)
    test[1, 1] = 1
    path = tmp_path / "training_test_dataset.mat"
    with h5py.File(path, "w") as f:  # MATLAB v7.3 writes column-major, i.e. transposed
        f["M"], f["Otraining"], f["Otest"] = m.T, train.T, test.T
    split = read_monti_mat(path, scale=RatingScale.from_range(1, 5))
    assert (split.train.num_users, split.train.num_items) == (2, 3)
    assert sorted(rows(split.train)) == [("0", "2", 5.0), ("1", "0", 3.0)]
    assert rows(split.test) == [("1", "1", 1.0)]


# ----------------------------------------------------------------------------- registry


def test_data_dir_resolution(tmp_path, monkeypatch):
    monkeypatch.setenv("CMCREC_DATA_DIR", str(tmp_path / "env"))
    assert resolve_data_dir(tmp_path / "arg") == tmp_path / "arg"
    assert resolve_data_dir() == tmp_path / "env"
    monkeypatch.delenv("CMCREC_DATA_DIR")
    assert "cmcrec" in str(resolve_data_dir())


def test_embedded_movietweetings_needs_no_data_dir(tmp_path):
    r = load_ratings("movietweetings-100k", data_dir=tmp_path)
    assert (r.num_users, r.num_items, len(r)) == (16554, 10506, 100000)
    assert r.scale == RatingScale.from_range(0, 10)
    assert r.timestamp is not None
    assert r.title("0110912") is None or r.title("0110912").startswith("Pulp Fiction")
    titled = [i for i in r.items.ids if r.title(i)]
    assert len(titled) == r.num_items
    assert all(len(i) == 7 for i in r.items.ids[:50])  # IMDb ids keep their leading zeros


def test_list_datasets(tmp_path):
    listing = {d["name"]: d for d in list_datasets(tmp_path)}
    assert set(listing) == set(DATASETS) == {"ml-100k", "douban", "flixster", "yahoo_music", "movietweetings-100k"}
    assert listing["movietweetings-100k"]["available"] and listing["movietweetings-100k"]["location"] == "embedded"
    assert not listing["ml-100k"]["available"]
    assert listing["ml-100k"]["default_split"] == "u1"
    assert listing["yahoo_music"]["rating_scale"]["num_buckets"] == 10
    assert "temporal" not in listing["douban"]["splits"]


def test_load_split_of_a_file_is_seeded(tmp_path):
    path = write(
        tmp_path / "r.csv",
        "".join(f"{u},{i},{(u + i) % 5 + 1},{u * 10 + i}\n" for u in range(10) for i in range(10)),
    )
    a = load_split(path, seed=3)
    b = load_split(path, seed=3)
    c = load_split(path, seed=4)
    assert len(a.test) == 20 and np.array_equal(a.test.rating, b.test.rating)
    assert not (np.array_equal(a.test.user, c.test.user) and np.array_equal(a.test.item, c.test.item))
    t = load_split(path, "temporal")
    assert len(t.test) == 10


def test_table_options_rejected_for_named_dataset():
    with pytest.raises(ConfigError, match="apply to files"):
        load_ratings("movietweetings-100k", delimiter=",")


# ----------------------------------------------------------------------------- real data


def test_ml100k_full(shared_data):
    r = load_ratings("ml-100k", data_dir=shared_data)
    assert (r.num_users, r.num_items, len(r)) == (943, 1682, 100000)
    assert r.scale == RatingScale.from_range(1, 5)
    assert r.title("1") == "Toy Story (1995)"
    assert r.item_genres["1"] == ("Animation", "Children's", "Comedy")
    assert r.users.ids[:3].tolist() == ["1", "2", "3"]


@pytest.mark.parametrize("split", ["u1", "ua"])
def test_ml100k_canonical_splits(shared_data, split):
    s = load_split("ml-100k", split, data_dir=shared_data)
    assert (s.train.num_users, s.train.num_items) == (943, 1682)
    assert len(s.train) + len(s.test) == 100000
    assert len(s.test) == (20000 if split == "u1" else 9430)
    train_pairs = set(zip(s.train.user.tolist(), s.train.item.tolist(), strict=True))
    assert not train_pairs & set(zip(s.test.user.tolist(), s.test.item.tolist(), strict=True))


def test_ml100k_default_split_is_u1(shared_data):
    assert load_split("ml-100k", data_dir=shared_data).name == "ml-100k/u1"


@pytest.mark.parametrize(
    ("name", "train", "test", "levels"),
    [("douban", 123202, 13689, 5), ("flixster", 23556, 2617, 10), ("yahoo_music", 4802, 533, 10)],
)
def test_monti_datasets(shared_data, name, train, test, levels):
    s = load_split(name, data_dir=shared_data)
    assert (s.train.num_users, s.train.num_items) == (3000, 3000)
    assert (len(s.train), len(s.test)) == (train, test)
    assert s.train.scale.num_relations == levels
    assert not s.train.scale.invalid(s.train.rating).any()


def test_yahoo_buckets_option(shared_data):
    s = load_split("yahoo_music", data_dir=shared_data, num_buckets=5)
    assert s.train.scale.num_relations == 5
    assert s.train.scale.minimum == 1 and s.train.scale.maximum == 100
    assert set(np.unique(s.train.relation_type).tolist()) <= set(range(5))


def test_shared_movietweetings_matches_embedded(shared_data):
    shared = load_ratings("movietweetings-100k", data_dir=shared_data)
    embedded = load_ratings("movietweetings-100k", data_dir=shared_data / "nowhere")
    assert shared.users == embedded.users and shared.items == embedded.items
    assert np.array_equal(shared.rating, embedded.rating)
    assert np.array_equal(shared.timestamp, embedded.timestamp)
