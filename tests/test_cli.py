"""The CLI contract: --json prints exactly one object, user errors exit 2 with one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
from synthetic import low_rank_ratings

from cmcrec.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_json(out: str) -> dict:
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 1, out
    return json.loads(lines[0])


@pytest.fixture(scope="module")
def ratings_csv(tmp_path_factory):
    r = low_rank_ratings(num_users=30, num_items=20, seed=7)
    path = tmp_path_factory.mktemp("csv") / "ratings.csv"
    rows = ["user,item,rating,timestamp"] + [
        f"{r.users.ids[u]},{r.items.ids[i]},{int(v)},{t}"
        for u, i, v, t in zip(r.user, r.item, r.rating, r.timestamp, strict=False)
    ]
    path.write_text("\n".join(rows) + "\n")
    return path


def test_data_info_ml100k(capsys, shared_data):
    code, out, _ = run(capsys, "data", "info", "ml-100k", "--data-dir", str(shared_data), "--json")
    assert code == 0
    info = one_json(out)
    assert (info["num_users"], info["num_items"], info["num_ratings"]) == (943, 1682, 100000)


def test_data_info_embedded_default_offline(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("CMCREC_DATA_DIR", str(tmp_path))  # an empty data dir: must fall back to the embedded copy
    code, out, _ = run(capsys, "data", "info", "movietweetings-100k", "--json")
    assert code == 0
    info = one_json(out)
    assert (info["num_users"], info["num_items"], info["num_ratings"]) == (16554, 10506, 100000)


def test_data_info_by_name_from_inside_the_data_dir(capsys, tmp_path, monkeypatch):
    """A folder named like the dataset in the working directory is the dataset, not a ratings file."""
    (tmp_path / "movietweetings-100k").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CMCREC_DATA_DIR", str(tmp_path))
    code, out, err = run(capsys, "data", "info", "movietweetings-100k", "--json")
    assert code == 0, err
    assert one_json(out)["num_ratings"] == 100000


def test_data_info_sep_flag(capsys, tmp_path):
    path = tmp_path / "r.txt"
    path.write_text("1\t10\t4\n2\t10\t5\n2\t11\t3\n")
    code, out, err = run(capsys, "data", "info", str(path), "--sep", "\\t", "--json")  # as a shell passes '\t'
    assert code == 0, err
    assert one_json(out)["num_ratings"] == 3
    for argv, message in [
        (["--sep", ""], "--sep must not be empty"),
        (["--duplicates", "bogus"], "--duplicates must be one of error, last, mean"),
    ]:
        code, out, err = run(capsys, "data", "info", str(path), *argv)
        assert code == 2 and message in err and "Traceback" not in err
    code, out, err = run(capsys, "data", "info", "movietweetings-100k", "--sep", ",")
    assert code == 2 and "--sep applies to a ratings file" in err


def test_data_list(capsys, tmp_path):
    code, out, _ = run(capsys, "data", "list", "--data-dir", str(tmp_path), "--json")
    assert code == 0
    names = {d["name"]: d["available"] for d in one_json(out)["datasets"]}
    assert names["movietweetings-100k"] is True
    assert names["ml-100k"] is False


def test_malformed_file_exit_2_names_line(capsys, tmp_path):
    bad = tmp_path / "some.csv"
    bad.write_text("user,item,rating\n1,2,3\n1,3,oops\n")
    code, out, err = run(capsys, "data", "info", str(bad), "--json")
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1
    assert "some.csv:3" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--model", "nope", "--dataset", "movietweetings-100k"], "unknown model 'nope'"),
        (["train", "--model", "mf", "--dataset", "no-such-data"], "unknown dataset"),
        (["train", "--model", "mf", "--epochs", "0"], "--epochs must be >= 1"),
        (["train", "--model", "mf", "--max-train-ratings", "1"], "--max-train-ratings"),
        (["train", "--model", "mf", "--preset", "huge"], "unknown preset"),
        (["train", "--model", "mf", "--resume"], "--resume needs --out"),
        (["train", "--model", "mf", "--k", "ten"], "--k"),
        (["train", "--model", "mf", "--rank-users", "0"], "--rank-users"),
        (["train", "--model", "mf", "--device", "tpu9"], "--device"),
        (["recommend", "--model", "/nonexistent/model", "--user", "1"], "no such model directory"),
        (["sweep", "--model", "mf", "--dataset", "no-such-data", "--candidates", "-5"], "--candidates must be >= 0"),
    ],
)
def test_bad_flags_exit_2(capsys, argv, message):
    code, out, err = run(capsys, *argv)
    assert code == 2, err
    assert message in err
    assert "Traceback" not in err


def test_bad_config_file(capsys, tmp_path):
    cfg = tmp_path / "c.json"
    cfg.write_text('{"factors": -1}')
    code, _, err = run(capsys, "train", "--model", "mf", "--config", str(cfg))
    assert code == 2 and "factors must be >= 0" in err
    cfg.write_text('{"factors": 4,\n "bogus": 1}')
    code, _, err = run(capsys, "train", "--model", "mf", "--config", str(cfg))
    assert code == 2 and "bogus" in err
    cfg.write_text('{"factors": 4,\n oops}')
    code, _, err = run(capsys, "train", "--model", "mf", "--config", str(cfg))
    assert code == 2 and "c.json:2" in err
    code, _, err = run(capsys, "train", "--model", "mf", "--config", str(tmp_path))
    assert code == 2 and "is a directory" in err and "Traceback" not in err
    cfg.write_bytes(b'{"factors": "\xff"}')
    code, _, err = run(capsys, "train", "--model", "mf", "--config", str(cfg))
    assert code == 2 and "not UTF-8" in err and "Traceback" not in err


def test_set_config_fields_on_the_command_line(capsys, tmp_path, ratings_csv):
    base = ["--dataset", str(ratings_csv), "--split", "random", "--json"]
    tiny = ["--set", "hidden_channels=4", "--set", "num_layers=1", "--set", "head_hidden=8", "--epochs", "1"]
    code, out, err = run(
        capsys, "train", "--model", "igmc", *base, *tiny, "--set", "eval_max_nodes_per_hop=2",
        "--set", "select_eval_cap=true", "--no-evaluate", "--out", str(tmp_path / "m"),
    )  # fmt: skip
    assert code == 0, err
    assert one_json(out)["eval_max_nodes_per_hop"] in (2, 4, None)
    manifest = json.loads((tmp_path / "m" / "manifest.json").read_text())
    assert manifest["config"]["hidden_channels"] == 4 and manifest["config"]["select_eval_cap"] is True
    assert [c["eval_max_nodes_per_hop"] for c in manifest["training"]["eval_cap"]["valid_rmse"]] == [2, 4, None]
    code, out, err = run(capsys, "evaluate", "--model", "mf", *base, "--set", "factors=3", "--epochs", "1")
    assert code == 0, err
    for bad, message in [
        (["--set", "nosuch=1"], "--set: unknown field(s) nosuch for igmc"),
        (["--set", "lr"], "--set: expected KEY=VALUE"),
        (["--set", "lr=-1"], "lr must be > 0"),
    ]:
        code, _, err = run(capsys, "train", "--model", "igmc", *base, *bad)
        assert code == 2 and message in err and "Traceback" not in err, err


def test_train_recommend_evaluate_end_to_end(capsys, tmp_path, ratings_csv):
    out_dir = tmp_path / "model"
    code, out, err = run(
        capsys,
        "train",
        "--model",
        "mf",
        "--dataset",
        str(ratings_csv),
        "--split",
        "random",
        "--epochs",
        "3",
        "--out",
        str(out_dir),
        "--json",
    )
    assert code == 0, err
    result = one_json(out)
    for key in ("rmse", "mae", "recall@10", "ndcg@10", "coverage@10", "best_epoch"):
        assert key in result and np.isfinite(result[key])
    assert (out_dir / "manifest.json").is_file()

    code, out, err = run(capsys, "recommend", "--model", str(out_dir), "--user", "u3", "-k", "4", "--json")
    assert code == 0, err
    recs = one_json(out)
    assert recs["user"] == "u3" and len(recs["items"]) == 4

    code, out, err = run(capsys, "recommend", "--model", str(out_dir), "--ratings", "i1=5,i2=1", "-k", "3", "--json")
    assert code == 0, err
    new = one_json(out)
    assert len(new["items"]) == 3 and not {"i1", "i2"} & {r["item"] for r in new["items"]}

    code, out, err = run(capsys, "recommend", "--model", str(out_dir), "--user", "u3", "-k", "3")
    assert code == 0 and "rank" in out.splitlines()[0]

    code, out, err = run(
        capsys, "evaluate", "--model", str(out_dir), "--dataset", str(ratings_csv), "--split", "random", "--json"
    )
    assert code == 0, err
    assert one_json(out)["rmse"] == pytest.approx(result["rmse"], rel=1e-6)

    for argv, message in [
        (["--user", "nobody"], "unknown user id 'nobody'"),
        (["--ratings", "i1=9"], "outside the scale"),
        (["--ratings", "zzz=4"], "unknown item id 'zzz'"),
        (["--ratings", "i1:4"], "item=rating"),
        (["--user", "u1", "--ratings", "i1=4"], "exactly one of"),
        (["--user", "u1", "-k", "0"], "-k must be"),
    ]:
        code, out, err = run(capsys, "recommend", "--model", str(out_dir), *argv)
        assert code == 2 and message in err, (argv, err)

    # Another dataset's vocabularies: refused, naming it, without a "--split None".
    code, out, err = run(capsys, "evaluate", "--model", str(out_dir), "--dataset", "movietweetings-100k")
    assert code == 2 and "do not match those of movietweetings-100k" in err and "None" not in err, err


@pytest.mark.parametrize("study", ["blog", "robustness"])
def test_study_split_defaults_to_the_datasets_own(capsys, study):
    """No --split: the dataset's canonical split, not ML-100K's u1 (checked before any data is read:
    the bad --device is the first complaint)."""
    code, out, err = run(
        capsys, "benchmark", study, "--dataset", "movietweetings-100k", "--models", "mf", "--device", "tpu"
    )
    assert code == 2 and "--split" not in err and "--device" in err, err


def test_file_flags_reach_train_and_evaluate(capsys, tmp_path, ratings_csv):
    """A repeated (user, item) pair stops training with a hint naming --duplicates; the flag fixes it."""
    dup = tmp_path / "dup.csv"
    lines = ratings_csv.read_text().splitlines()
    dup.write_text("\n".join([*lines, lines[1]]) + "\n")
    argv = ["--model", "mf", "--dataset", str(dup), "--epochs", "1", "--json"]
    code, out, err = run(capsys, "train", *argv)
    assert code == 2 and "--duplicates" in err and "Traceback" not in err, err
    code, out, err = run(capsys, "train", *argv, "--duplicates", "last", "--no-evaluate")
    assert code == 0, err
    code, out, err = run(capsys, "evaluate", *argv, "--duplicates", "last")
    assert code == 0, err
    code, out, err = run(capsys, "train", "--model", "mf", "--dataset", "movietweetings-100k", "--duplicates", "last")
    assert code == 2 and "--duplicates applies to a ratings file" in err


def test_data_download(capsys, tmp_path, monkeypatch):
    import cmcrec.data.download as dl

    calls = []
    monkeypatch.setattr(dl, "download_ml100k", lambda root: calls.append(root) or root / "ml-100k")
    code, out, err = run(capsys, "data", "download", "ml-100k", "--data-dir", str(tmp_path), "--json")
    assert code == 0, err
    assert calls == [tmp_path] and one_json(out) == {"dataset": "ml-100k", "path": str(tmp_path / "ml-100k")}
    code, out, err = run(capsys, "data", "download", "douban", "--data-dir", str(tmp_path))
    assert code == 2 and "no public download" in err and not calls[1:]
    code, out, err = run(capsys, "data", "download", "nope")
    assert code == 2 and "unknown dataset 'nope'" in err


def test_columns_flag_maps_a_files_header(capsys, tmp_path):
    path = tmp_path / "odd.csv"
    path.write_text("who,what,stars\nu1,i1,4\nu2,i1,5\nu2,i2,3\n")
    code, out, err = run(capsys, "data", "info", str(path), "--json")
    assert code == 2 and "--columns" in err, err  # the hint names the flag
    code, out, err = run(capsys, "data", "info", str(path), "--columns", "user=who,item=what,rating=stars", "--json")
    assert code == 0, err
    assert one_json(out)["num_ratings"] == 3
    code, out, err = run(capsys, "data", "info", str(path), "--columns", "user=0,item=1,rating=2", "--json")
    assert code == 0 and one_json(out)["num_users"] == 2, err
    for bad, message in [("user=who,item", "key=column pairs"), ("user=a,user=b", "user is given twice")]:
        code, out, err = run(capsys, "data", "info", str(path), "--columns", bad)
        assert code == 2 and message in err, err


def test_num_buckets_flag_sets_the_saved_models_relation_types(capsys, tmp_path, shared_data):
    out = tmp_path / "yahoo-bias"
    argv = ["train", "--model", "bias", "--dataset", "yahoo_music", "--data-dir", str(shared_data)]
    code, _, err = run(capsys, *argv, "--num-buckets", "20", "--out", str(out), "--no-evaluate", "--json")
    assert code == 0, err
    scale = json.loads((out / "manifest.json").read_text())["scale"]
    assert scale["num_buckets"] == 20 and (scale["levels"][0], scale["levels"][-1]) == (1.0, 100.0)
    info = {}
    for flag in ([], ["--num-buckets", "100"]):
        code, out_text, err = run(
            capsys, "data", "info", "yahoo_music", "--data-dir", str(shared_data), *flag, "--json"
        )
        assert code == 0, err
        info[len(flag)] = one_json(out_text)
    assert (info[0]["num_buckets"], info[0]["num_relations"]) == (10, 10)  # the default, without the flag
    assert (info[2]["num_buckets"], info[2]["num_relations"]) == (100, 100)
