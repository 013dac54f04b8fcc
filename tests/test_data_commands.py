"""The `lop data` command group, driven through an argparse parser like lop/cli.py builds."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from lop.data import commands
from lop.data.artifact import prepared_stand_in
from lop.errors import DataError


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="lop")
    sub = parser.add_subparsers(dest="command", required=True)
    commands.register(sub)
    args = parser.parse_args(argv)
    return args.func(args)


def test_parser_shapes():
    parser = argparse.ArgumentParser(prog="lop")
    commands.register(parser.add_subparsers(dest="command", required=True))
    a = parser.parse_args(
        ["data", "prepare", "imagenet32", "--raw", "r", "--out", "o", "--image-folder", "f"]
    )
    assert (a.dataset, a.raw, a.out, a.image_folder, a.verify) == ("imagenet32", "r", "o", "f", True)
    a = parser.parse_args(["data", "standin", "cifar100", "--raw", "r", "--size", "demo", "--seed", "3"])
    assert (a.size, a.seed) == ("demo", 3)
    a = parser.parse_args(["data", "download", "mnist", "--raw", "r", "--url", "http://127.0.0.1:1/"])
    assert a.url == "http://127.0.0.1:1/" and callable(a.func)
    for bad in (
        ["data"],
        ["data", "standin", "svhn", "--raw", "r"],
        ["data", "standin", "mnist", "--raw", "r", "--seed", "-1"],
        ["data", "prepare", "mnist", "--raw", "r"],
    ):
        with pytest.raises(SystemExit):
            parser.parse_args(bad)


def test_standin_prepare_verify_round_trip(tmp_path, capsys):
    raw, out = tmp_path / "data" / "raw" / "imagenet32", tmp_path / "data" / "prepared" / "imagenet32"
    assert _run(["data", "standin", "imagenet32", "--raw", str(raw), "--size", "small", "--seed", "1"]) == 0
    assert _run(["data", "verify", str(raw)]) == 0
    assert "raw imagenet32 (standin)" in capsys.readouterr().out
    assert _run(["data", "prepare", "imagenet32", "--raw", str(raw), "--out", str(out)]) == 0
    assert "prepared imagenet32 (standin)" in capsys.readouterr().out
    assert _run(["data", "verify", str(out)]) == 0
    assert "10 files verified" in capsys.readouterr().out
    m = json.loads((out / "manifest.json").read_text())
    assert (m["n_classes"], m["per_class"], m["n_train"]) == (10, 70, 60)
    assert m["stand_in"] is True and json.loads((raw / "standin.json").read_text())["generator"]


def test_manifests_without_the_stand_in_key_still_verify(tmp_path, capsys):
    raw, out = tmp_path / "raw", tmp_path / "prepared" / "imagenet32"
    _run(["data", "standin", "imagenet32", "--raw", str(raw), "--size", "small"])
    _run(["data", "prepare", "imagenet32", "--raw", str(raw), "--out", str(out), "--no-verify"])
    path = out / "manifest.json"
    m = json.loads(path.read_text())
    del m["stand_in"]
    for source, want in (("standin", True), ("official", False)):  # written before the key existed
        path.write_text(json.dumps({**m, "source": source}))
        assert _run(["data", "verify", str(out)]) == 0
        assert prepared_stand_in(out, "imagenet32") is want
    path.write_text(json.dumps({**m, "stand_in": "yes"}))
    with pytest.raises(DataError, match="'stand_in' must be true or false"):
        _run(["data", "verify", str(out)])


def test_verify_detects_corruption(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "prepared" / "mnist"
    _run(["data", "standin", "mnist", "--raw", str(raw)])
    _run(["data", "prepare", "mnist", "--raw", str(raw), "--out", str(out), "--no-verify"])
    labels = np.load(out / "test_labels.npy")
    np.save(out / "test_labels.npy", (labels + 1) % 10)
    with pytest.raises(DataError, match=r"test_labels\.npy: sha256 mismatch.*re-run `lop data prepare mnist"):
        _run(["data", "verify", str(out)])
    (raw / "t10k-labels-idx1-ubyte.gz").write_bytes(b"broken")
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte\.gz: md5"):
        _run(["data", "verify", str(raw)])


def test_verify_an_unknown_folder(tmp_path):
    with pytest.raises(DataError, match="neither a prepared artifact"):
        _run(["data", "verify", str(tmp_path)])


def test_imagenet_download_is_refused_with_an_explanation(tmp_path):
    with pytest.raises(DataError, match=r"image-net\.org account.*non-commercial"):
        _run(["data", "download", "imagenet32", "--raw", str(tmp_path / "raw")])
    assert not (tmp_path / "raw").exists()


def test_imagenet_only_options_are_rejected_for_other_datasets(tmp_path):
    with pytest.raises(DataError, match="imagenet32 only"):
        _run(["data", "prepare", "mnist", "--raw", "r", "--out", "o", "--image-folder", "f"])
