"""Bad input raises DataError naming the file and the line (1-based, header counted) or field."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cmcrec.data import RatingScale, load_ratings, load_split, read_monti_mat, read_table
from cmcrec.errors import DataError


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def raises_at(path: Path, line: int | None, match: str, **kwargs) -> DataError:
    with pytest.raises(DataError, match=match) as info:
        read_table(path, **kwargs)
    err = info.value
    assert err.path == str(path)
    assert err.line == line
    if line is not None:
        assert str(err).startswith(f"{path}:{line}")
    return err


def test_too_many_fields(tmp_path):
    path = write(tmp_path / "r.csv", "1,10,4,100\n2,10,5,200\n2,11,3,300,9\n")
    raises_at(path, 3, r"has 5 field\(s\).*line 1 has 4")


def test_too_few_fields(tmp_path):
    path = write(tmp_path / "r.csv", "1,10,4,100\n2,10\n")
    raises_at(path, 2, r"has 2 field\(s\), expected 4")


def test_too_few_fields_with_header(tmp_path):
    path = write(tmp_path / "r.csv", "user,item,rating\n1,10,4\n2,10,5\n3\n")
    raises_at(path, 4, r"has 1 field\(s\), expected 3", header=True)


def test_wrong_delimiter_is_named_and_the_right_one_suggested(tmp_path):
    path = write(tmp_path / "r.csv", "1\t10\t4\n2\t10\t5\n")
    err = raises_at(path, 1, "one field per line", delimiter=",")
    assert "delimiter='\\t'" in str(err)


def test_no_delimiter_at_all(tmp_path):
    path = write(tmp_path / "r.txt", "abc\ndef\n")
    raises_at(path, 1, "one field per line.*pass delimiter")


def test_non_numeric_rating(tmp_path):
    path = write(tmp_path / "r.csv", "user,item,rating\n1,10,4\n2,10,five\n")
    err = raises_at(path, 3, "rating 'five' is not a number", header=True)
    assert err.field == "rating"


def test_nan_rating(tmp_path):
    path = write(tmp_path / "r.tsv", "1\t10\t4\n2\t10\tNaN\n")
    raises_at(path, 2, "rating is NaN")


def test_infinite_rating(tmp_path):
    path = write(tmp_path / "r.tsv", "1\t10\t4\n2\t10\tinf\n")
    raises_at(path, 2, "not finite")


def test_out_of_scale_rating(tmp_path):
    path = write(tmp_path / "r.csv", "1,10,4\n2,10,5\n3,10,7\n")
    raises_at(path, 3, r"rating 7 is outside the rating scale 1\.\.5", scale=RatingScale.from_range(1, 5))


def test_rating_between_levels(tmp_path):
    path = write(tmp_path / "r.csv", "1,10,4\n2,10,3.5\n")
    raises_at(path, 2, "not a level of the rating scale", scale=RatingScale.from_range(1, 5))


def test_duplicate_pair_names_both_lines(tmp_path):
    path = write(tmp_path / "r.csv", "user,item,rating\n1,10,4\n2,10,5\n1,11,3\n1,10,2\n")
    err = raises_at(path, 5, "duplicate rating for user '1' and item '10': also on line 2", header=True)
    assert "duplicates='last'" in str(err)


def test_empty_file(tmp_path):
    path = write(tmp_path / "r.csv", "")
    raises_at(path, None, "file is empty")


def test_whitespace_only_file(tmp_path):
    path = write(tmp_path / "r.csv", "\n  \n")
    raises_at(path, None, "file is empty")


def test_only_line_separators(tmp_path):
    # \x1c and \x1d end lines for Python but are not whitespace to bytes.strip().
    path = tmp_path / "r.txt"
    path.write_bytes(b"\x1c\x1d\x1c")
    raises_at(path, None, "no non-blank line")


def test_damaged_gzip(tmp_path):
    import gzip

    packed = bytearray(gzip.compress(b"1\t10\t4\n2\t10\t5\n" * 200))
    packed[20:40] = b"\xff" * 20  # inside the deflate stream: zlib, not OSError, reports it
    path = tmp_path / "r.tsv.gz"
    path.write_bytes(bytes(packed))
    raises_at(path, None, "cannot decompress gzip file")


def test_empty_delimiter_is_refused(tmp_path):
    from cmcrec.errors import ConfigError

    path = write(tmp_path / "r.csv", "1,10,4\n")
    with pytest.raises(ConfigError, match="delimiter must not be empty"):
        read_table(path, delimiter="")


def test_trailing_delimiter_is_pointed_out(tmp_path):
    path = write(tmp_path / "r.txt", "1,10,4,\n2,10,5,\n")
    raises_at(path, 1, "empty timestamp field .*a trailing one makes an empty last field")


def test_header_only(tmp_path):
    path = write(tmp_path / "r.csv", "user,item,rating\n")
    raises_at(path, None, "header but no data rows", header=True)


def test_missing_column_in_header_mapping(tmp_path):
    path = write(tmp_path / "r.csv", "uid,iid,score\n1,10,4\n")
    err = raises_at(path, 1, "header has no column 'stars'", columns={"user": "uid", "item": "iid", "rating": "stars"})
    assert err.field == "stars"
    assert "'score'" in str(err)  # the columns that are there are listed


def test_header_without_recognisable_rating_column(tmp_path):
    path = write(tmp_path / "r.csv", "uid,iid,points\n1,10,4\n")
    err = raises_at(path, 1, "header has no rating column", header=True)
    assert err.field == "rating"


def test_mapping_needs_more_fields_than_the_file_has(tmp_path):
    path = write(tmp_path / "r.csv", "1,10,4\n")
    raises_at(path, 1, "has 3 fields but the column mapping needs 5", columns={"user": 0, "item": 1, "rating": 4})


def test_missing_file(tmp_path):
    raises_at(tmp_path / "nope.csv", None, "no such file")


def test_missing_file_via_load_ratings(tmp_path):
    with pytest.raises(DataError, match="no such file") as info:
        load_ratings(tmp_path / "nope.csv")
    assert info.value.path == str(tmp_path / "nope.csv")


def test_unknown_dataset_lists_known_names():
    with pytest.raises(DataError, match="unknown dataset 'movielens'") as info:
        load_ratings("movielens")
    for name in ("ml-100k", "douban", "flixster", "yahoo_music", "movietweetings-100k"):
        assert name in str(info.value)
    with pytest.raises(DataError, match="known datasets"):
        load_split("netflix")


def test_bad_split_name_lists_valid_ones():
    with pytest.raises(DataError, match="unknown split 'u9'.*random, temporal") as info:
        load_split("movietweetings-100k", "u9")
    assert info.value.field == "split"


def test_bad_split_name_for_a_file(tmp_path):
    path = write(tmp_path / "r.csv", "1,10,4\n2,10,5\n")
    with pytest.raises(DataError, match="unknown split 'u1' for a ratings file"):
        load_split(path, "u1")


def test_missing_dataset_says_how_to_get_it(tmp_path):
    with pytest.raises(DataError, match="download=True") as info:
        load_ratings("ml-100k", data_dir=tmp_path)
    assert info.value.path == str(tmp_path / "ml-100k")
    with pytest.raises(DataError, match="mgcnn"):
        load_split("douban", data_dir=tmp_path)


def test_non_integer_timestamp(tmp_path):
    path = write(tmp_path / "r.dat", "1::10::4::100\n2::10::5::12.5\n")
    err = raises_at(path, 2, r"timestamp '12\.5' is neither an integer")
    assert err.field == "timestamp"


def test_timestamp_neither_number_nor_date(tmp_path):
    path = write(tmp_path / "r.csv", "user,item,rating,date\n1,10,4,2013-01-01\n2,10,5,yesterday\n")
    err = raises_at(path, 3, r"timestamp 'yesterday' is neither an integer \(Unix seconds\) nor an ISO 8601 date")
    assert err.field == "timestamp"


def test_parquet_nullable_integer_timestamp_with_a_gap(tmp_path):
    path = tmp_path / "r.parquet"
    pd.DataFrame(
        {"user": [1, 2, 3], "item": [2, 2, 2], "rating": [3.0, 4.0, 4.0], "timestamp": pd.array([5, None, 7], "Int64")}
    ).to_parquet(path)
    with pytest.raises(DataError, match="row 2: timestamp is missing") as info:
        read_table(path)
    assert info.value.field == "timestamp"


def test_empty_user_field(tmp_path):
    path = write(tmp_path / "r.csv", "1,10,4\n,10,5\n")
    err = raises_at(path, 2, "empty user field")
    assert err.field == "user"


def test_bad_encoding(tmp_path):
    path = tmp_path / "r.csv"
    path.write_bytes(b"1,10,4\n2,caf\xe9,5\n")
    raises_at(path, 2, "not valid utf-8")


def test_inferred_scale_needs_two_values(tmp_path):
    path = write(tmp_path / "r.csv", "1,10,4\n2,10,4\n")
    raises_at(path, None, "cannot infer a rating scale")


def _write_mat(path: Path, keys: dict[str, np.ndarray]) -> Path:
    h5py = pytest.importorskip("h5py")
    with h5py.File(path, "w") as f:
        for k, v in keys.items():
            f[k] = v
    return path


def test_corrupt_mat_missing_key(tmp_path):
    m = np.eye(3)
    path = _write_mat(tmp_path / "training_test_dataset.mat", {"M": m, "Otraining": m})
    with pytest.raises(DataError, match="has no 'Otest' matrix") as info:
        read_monti_mat(path, scale=RatingScale.from_range(1, 5))
    assert info.value.field == "Otest" and info.value.path == str(path)


def test_mat_that_is_not_hdf5(tmp_path):
    path = write(tmp_path / "training_test_dataset.mat", "MATLAB 5.0 MAT-file, not HDF5")
    with pytest.raises(DataError, match="not a MATLAB v7.3"):
        read_monti_mat(path, scale=RatingScale.from_range(1, 5))


def test_mat_rating_outside_scale(tmp_path):
    m = np.eye(3) * 9
    path = _write_mat(
        tmp_path / "training_test_dataset.mat", {"M": m, "Otraining": np.eye(3), "Otest": np.zeros((3, 3))}
    )
    with pytest.raises(DataError, match=r"M\[0, 0\] = 9"):
        read_monti_mat(path, scale=RatingScale.from_range(1, 5))


def test_parquet_missing_column(tmp_path):
    path = tmp_path / "r.parquet"
    pd.DataFrame({"user": [1], "item": [2], "points": [3.0]}).to_parquet(path)
    with pytest.raises(DataError, match="has no rating column.*'points'") as info:
        read_table(path)
    assert info.value.field == "rating"
    with pytest.raises(DataError, match="has no column 'stars'"):
        read_table(path, columns={"user": "user", "item": "item", "rating": "stars"})


def test_parquet_bad_value_names_the_row(tmp_path):
    path = tmp_path / "r.parquet"
    pd.DataFrame({"user": [1, 2, 3], "item": [2, 2, 2], "rating": [3.0, float("nan"), 4.0]}).to_parquet(path)
    with pytest.raises(DataError, match="row 2: rating is NaN") as info:
        read_table(path)
    assert info.value.field == "rating"
