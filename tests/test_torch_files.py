"""Files written with `torch.save` are a function of their content (what DVC hashes): the same tensors give
the same bytes whatever the file's name and the random temp name of the atomic write."""

from __future__ import annotations

import hashlib

import torch

from lop.io import save_checkpoint, save_torch


def _md5(path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_same_content_same_bytes_under_any_name(tmp_path):
    state = {"w": torch.arange(12, dtype=torch.float32).view(3, 4), "step": torch.tensor(7)}
    paths = [tmp_path / "a.pt", tmp_path / "sub" / "other-name.pt", tmp_path / "a2.pt"]
    for p in paths:
        save_torch(p, state)
    assert len({_md5(p) for p in paths}) == 1
    save_checkpoint(tmp_path / "ckpt.pt", state)
    assert _md5(tmp_path / "ckpt.pt") == _md5(paths[0])
    back = torch.load(paths[1], weights_only=True)
    assert torch.equal(back["w"], state["w"]) and int(back["step"]) == 7
    assert not list(tmp_path.rglob(".*.tmp"))  # no temp file left behind


def test_different_content_different_bytes(tmp_path):
    save_torch(tmp_path / "a.pt", {"w": torch.zeros(3)})
    save_torch(tmp_path / "b.pt", {"w": torch.ones(3)})
    assert _md5(tmp_path / "a.pt") != _md5(tmp_path / "b.pt")


def test_pretrained_checkpoint_bytes_do_not_depend_on_the_temp_name(tmp_path):
    """budgeted_cl's pretrained network (a DVC output) is written twice: byte-identical."""
    from lop.experiments.budgeted_cl import save_pretrained
    from lop.experiments.schemas import BudgetedCLProblem

    p = BudgetedCLProblem()
    state = {"conv.weight": torch.linspace(-1, 1, 27).view(1, 3, 3, 3)}
    save_pretrained(p, state, tmp_path / "x" / "demo.pt")
    save_pretrained(p, state, tmp_path / "y" / "demo.pt")
    assert _md5(tmp_path / "x" / "demo.pt") == _md5(tmp_path / "y" / "demo.pt")
