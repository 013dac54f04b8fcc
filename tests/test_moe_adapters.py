"""MoE adapters on a frozen CLIP (issue 15): gating, routing, noise, activate-freeze, DDAS, CLIP weights
from a state-dict file, the BPE tokenizer, batch independence and bad settings of `moe_cifar`."""

from __future__ import annotations

import gzip
import itertools
from pathlib import Path

import pandas as pd
import pytest
import torch

from lop.algos.adamw import RunAdamW
from lop.algos.ddas import TaskAutoencoders, select_routes
from lop.config import MethodConfig, MoEAdaptersConfig, from_dict
from lop.errors import ConfigError, DataError
from lop.experiments.base import RunSpec, check_supported, get_experiment
from lop.experiments.moe_cifar import CIFAR100_NAMES, CLASS_ORDER_1993, cosine_factor
from lop.nets.clip import ARCHS, encode_image, encode_text, load_clip_state, random_clip_state, state_shapes
from lop.nets.clip_tokenizer import BPETokenizer, ByteTokenizer, byte_symbols
from lop.nets.moe_adapters import MoEAdapters, top_k_gates
from lop.rng import RunStreams
from lop.runner import run_group

CPU = torch.device("cpu")
TINY = ARCHS["tiny"]
SMOKE = {
    "n_steps": 2,
    "n_classes": 4,
    "backbone": "tiny",
    "tokenizer": "bytes",
    "train_per_class": 8,
    "val_per_class": 2,
    "test_per_class": 4,
    "batch_size": 8,
    "eval_batch": 16,
}


def adapters(seeds=(0, 1), **kw) -> MoEAdapters:
    args = {"n_experts": 4, "top_k": 2, "n_routers": 3, "bottleneck": 8}
    return MoEAdapters(RunStreams(list(seeds)), TINY, **{**args, **kw})


def randomise_routers(ad: MoEAdapters, seed: int = 5) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for k, p in ad.params.items():
            if ".router." in k or ".up." in k:
                p.copy_(torch.randn(p.shape, generator=g))


# ---- gating and routing ----------------------------------------------------------------------------
def test_top_k_gates_are_a_softmax_over_the_k_largest():
    logits = torch.tensor([[1.0, 3.0, 2.0, -1.0]])
    g = top_k_gates(logits, 2)
    expect = torch.softmax(torch.tensor([3.0, 2.0]), 0)
    assert torch.allclose(g, torch.tensor([[0.0, expect[0], expect[1], 0.0]]))
    torch.testing.assert_close(top_k_gates(logits, 4), torch.softmax(logits, -1))


def test_adapters_start_as_identity_of_clip():
    """W_up and the biases are zero at init: CLIP with adapters equals CLIP without."""
    w = random_clip_state(TINY)
    ad = adapters()
    ad.ctx.training, ad.ctx.noise = True, True
    x = torch.randn(2, 3, 3, 32, 32)
    torch.testing.assert_close(encode_image(x, w, TINY, ad), encode_image(x, w, TINY))
    assert ad.params["visual.down.weight"].abs().max() <= 1 / 64**0.5  # kaiming(a=√5): U(±1/√d), d = 64
    assert ad.params["visual.down.weight"].abs().max() > 0


def test_per_sample_routes_use_their_router_and_minus_one_is_zero_shot():
    ad = adapters()
    randomise_routers(ad)
    x = torch.randn(2, 5, 7, TINY.vision_width)
    per_router = []
    for r in range(3):
        ad.ctx.route = r
        per_router.append(ad("visual", 1, x))
    route = torch.tensor([[0, 1, 2, -1, 1], [2, 2, 0, 1, -1]])
    ad.ctx.route = route
    mixed = ad("visual", 1, x)
    for s in range(2):
        for b in range(5):
            r = int(route[s, b])
            expect = torch.zeros_like(mixed[s, b]) if r < 0 else per_router[r][s, b]
            torch.testing.assert_close(mixed[s, b], expect)
    assert not torch.allclose(per_router[0], per_router[1])


def test_gates_read_the_first_token_and_keep_k_experts():
    ad = adapters(n_experts=5, top_k=2)
    randomise_routers(ad)
    c = torch.randn(2, 6, TINY.vision_width)
    g = ad.gates("visual", 0, c)
    assert ((g > 0).sum(-1) == 2).all()
    torch.testing.assert_close(g.sum(-1), torch.ones(2, 6))
    expect = top_k_gates(torch.bmm(c, ad.params["visual.router.gate"][:, 0, 0]), 2)
    torch.testing.assert_close(g, expect)


def test_noise_only_when_asked_and_drawn_per_step():
    ad = adapters()
    randomise_routers(ad)
    c = torch.randn(2, 6, TINY.vision_width)
    ad.ctx.noise = False
    clean = ad.gates("visual", 0, c)
    ad.ctx.noise, ad.ctx.step = True, 0
    noisy0 = ad.gates("visual", 0, c)
    ad.ctx.step = 1
    noisy1 = ad.gates("visual", 0, c)
    assert not torch.allclose(clean, noisy0) and not torch.allclose(noisy0, noisy1)
    ad.ctx.step = 0
    assert torch.equal(ad.gates("visual", 0, c), noisy0)


def test_evaluation_has_no_router_noise_unless_the_bug_is_reproduced(prepared_standins):
    """Two evaluations of the same trained model agree (no noise); with noise_at_test they see noisy
    gates (the public CIL code's behaviour) and differ from the clean evaluation."""
    spec = get_experiment("moe_cifar")
    prob = from_dict(spec.problem_cls, {**SMOKE, "data_dir": str(prepared_standins["cifar100"])}, "p")

    def trained(noise_at_test: bool):
        cfg = from_dict(MethodConfig, {"optimizer": "adam", "lr": 0.05, "moe_adapters": {"noise_at_test": noise_at_test, "dropout": 0.0}}, "m")
        tr = spec.build(prob, [RunSpec("m", "d", {}, cfg, 0)], CPU)
        randomise_routers(tr.adapters)
        return tr

    clean = trained(False)
    a, b = clean.evaluate(2, True)[0], clean.evaluate(2, True)[0]
    assert torch.equal(a, b)
    seen = []
    orig = clean.adapters.gates

    def spy(enc, layer, c):
        seen.append(clean.adapters.ctx.noise)
        return orig(enc, layer, c)

    clean.adapters.gates = spy
    clean.evaluate(2, True)
    assert seen and not any(seen)
    buggy = trained(True)
    seen_bug = []
    orig_b = buggy.adapters.gates
    buggy.adapters.gates = lambda e, layer, c: (seen_bug.append(buggy.adapters.ctx.noise), orig_b(e, layer, c))[1]
    buggy.evaluate(2, True)
    assert seen_bug and all(seen_bug)


# ---- activate-freeze -------------------------------------------------------------------------------
def test_most_used_experts_are_frozen_and_stay_fixed():
    ad = adapters(seeds=(0,))
    ad.usage["visual"][0, 0] = torch.tensor([5.0, 9.0, 1.0, 7.0])
    ad.usage["text"][0, 1] = torch.tensor([0.0, 0.0, 3.0, 2.0])
    ad.freeze_most_used(2)
    assert ad.frozen["visual"][0, 0].tolist() == [False, True, False, True]
    assert ad.frozen["text"][0, 1].tolist() == [False, False, True, True]
    assert float(ad.usage["visual"].sum()) == 0.0
    before = {k: v.detach().clone() for k, v in ad.params.items()}
    opt = RunAdamW(ad.params, torch.tensor([0.1]))
    for p in ad.params.values():
        p.grad = torch.ones_like(p)
    opt.step(1.0, ad.trainable_masks(router=1))
    down, old = ad.params["visual.down.weight"][0, 0], before["visual.down.weight"][0, 0]
    assert torch.equal(down[1], old[1]) and torch.equal(down[3], old[3])
    assert not torch.equal(down[0], old[0])
    gate, old_gate = ad.params["visual.router.gate"][0], before["visual.router.gate"][0]
    assert torch.equal(gate[0], old_gate[0]) and torch.equal(gate[2], old_gate[2])
    assert not torch.equal(gate[1], old_gate[1])


def test_usage_counts_top_k_choices_in_training():
    ad = adapters(seeds=(0,), n_experts=4, top_k=1)
    randomise_routers(ad)
    ad.ctx.training = True
    x = torch.randn(1, 10, 3, TINY.vision_width)
    g = ad.gates("visual", 0, x[:, :, 0])
    ad("visual", 0, x)
    torch.testing.assert_close(ad.usage["visual"][0, 0], (g[0] > 0).sum(0).float())
    assert float(ad.take_balance_loss()[0].detach()) > 0


# ---- DDAS ------------------------------------------------------------------------------------------
def test_ddas_per_sample_and_per_batch_decisions():
    errors = torch.tensor([[[0.01, 0.20], [0.30, 0.02], [0.50, 0.60]]])  # [S=1, B=3, T=2]
    assert select_routes(errors, 0.1, "per_sample").tolist() == [[0, 1, -1]]
    # batch means: task 0 = 0.27, task 1 = 0.273 -> task 0, under the threshold 0.3 for everyone
    assert select_routes(errors, 0.3, "per_batch").tolist() == [[0, 0, 0]]
    assert select_routes(errors, 0.1, "per_batch").tolist() == [[-1, -1, -1]]


def test_ddas_autoencoders_tell_tasks_apart():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(200, 16, generator=g) * 0.3 + 3.0
    b = torch.randn(200, 16, generator=g) * 0.3 - 3.0
    ae = TaskAutoencoders(RunStreams([0, 1]), 2, 16, hidden=8)
    ae.train_task(0, a, steps=150, decay_every=100)
    ae.train_task(1, b, steps=150, decay_every=100)
    routes = select_routes(ae.errors(torch.cat([a[:20], b[:20]]), 2), 1.0)
    expect = torch.tensor([0] * 20 + [1] * 20)
    assert (routes == expect).float().mean() > 0.95


# ---- CLIP weights and tokenizer --------------------------------------------------------------------
def test_clip_weights_load_from_an_official_state_dict_file(tmp_path):
    state = random_clip_state(TINY, seed=3)
    state["input_resolution"] = torch.tensor(32)  # extra keys of the OpenAI files are ignored
    path = tmp_path / "clip.pt"
    torch.save({f"module.{k}" if k == "visual.proj" else k: v for k, v in state.items()}, path)
    loaded = load_clip_state(path, TINY)
    assert set(loaded) == set(state_shapes(TINY))
    for k, v in loaded.items():
        assert torch.equal(v, state[k]), k
    x = torch.randn(1, 2, 3, 32, 32)
    torch.testing.assert_close(encode_image(x, loaded, TINY), encode_image(x, state, TINY))
    del state["transformer.resblocks.1.mlp.c_fc.bias"]
    torch.save(state, path)
    with pytest.raises(DataError, match=r"transformer\.resblocks\.1\.mlp\.c_fc\.bias"):
        load_clip_state(path, TINY)
    with pytest.raises(DataError, match="no CLIP weights file"):
        load_clip_state(tmp_path / "absent.pt", TINY)
    with pytest.raises(DataError, match="has shape"):
        load_clip_state(path, ARCHS["vit_b16"])


def test_text_encoder_reads_the_end_token_and_is_causal():
    w = random_clip_state(TINY)
    tok = ByteTokenizer()(["a cat", "a cat"], TINY.context_length)
    tok2 = tok.clone()
    tok2[1, -1] = 7  # after the end token: invisible to a causal encoder read at the end token
    e = encode_text(tok2[None], w, TINY)
    torch.testing.assert_close(e[0, 0], e[0, 1])


def write_merges(path: Path) -> None:
    path.write_bytes(gzip.compress(b"#version: test\nh e\nl l\nhe ll\nhell o</w>\n"))


def test_bpe_tokenizer_on_a_tiny_vocabulary(tmp_path):
    path = tmp_path / "merges.txt.gz"
    write_merges(path)
    tok = BPETokenizer(path)
    assert tok.vocab_size == 512 + 4 + 2 and (tok.sot, tok.eot) == (516, 517)
    assert tok.encode("Hello") == [512 + 3]  # fully merged, lower-cased
    sym = list(byte_symbols().values())
    # "hi" has no merge: byte symbols 'h' and 'i</w>'; '!' is its own word
    assert tok.encode("hi!") == [sym.index("h"), 256 + sym.index("i"), 256 + sym.index("!")]
    assert tok.encode("a  b") == [256 + sym.index("a"), 256 + sym.index("b")]  # whitespace collapsed
    batch = tok(["hello", "hello hello hello"], 4)
    assert batch.tolist() == [[516, 515, 517, 0], [516, 515, 515, 517]]  # padded; cut keeps the end token
    assert len(sym) == 256 and sym[32 - 0] != " "  # the space byte maps to a printable symbol
    with pytest.raises(DataError, match="no BPE merges file"):
        BPETokenizer(tmp_path / "absent.gz")


# ---- experiment ------------------------------------------------------------------------------------
def test_class_order_and_names():
    assert CLASS_ORDER_1993[:6] == (87, 0, 52, 58, 44, 91) and sorted(CLASS_ORDER_1993) == list(range(100))
    assert len(CIFAR100_NAMES) == 100 and CIFAR100_NAMES[87] == "television"


def test_cosine_schedule_warms_up_then_decays():
    f = [cosine_factor(i, 100, 30) for i in range(100)]
    assert f[0] == pytest.approx(1 / 30) and f[29] == pytest.approx(1.0) and f[30] == pytest.approx(1.0)
    assert f[99] < 0.01 and all(a >= b for a, b in itertools.pairwise(f[30:]))


def run(tmp: Path, data: Path, moe: dict, seeds=(0,), problem: dict | None = None) -> list[Path]:
    spec = get_experiment("moe_cifar")
    prob = from_dict(spec.problem_cls, {**SMOKE, **(problem or {}), "data_dir": str(data)}, "p")
    opt = {} if moe.get("mode") == "zero_shot" else {"optimizer": "adam", "lr": 0.01}
    cfg = from_dict(MethodConfig, {**opt, "moe_adapters": moe}, "m")
    return run_group(spec, prob, [RunSpec("m", "d", {}, cfg, s) for s in seeds], tmp, scale="smoke", device=CPU, progress=False)


def metrics(d: Path) -> pd.DataFrame:
    return pd.read_parquet(d / "metrics.parquet").sort_values(["metric", "step"]).reset_index(drop=True)


@pytest.mark.parametrize(
    "moe", [{}, {"experts": 3, "top_k": 1, "routers": "per_task", "ddas": "per_sample", "freeze_top": 1, "ddas_steps_first": 5, "ddas_steps": 5}]
)
def test_run_does_not_depend_on_its_batch(tmp_path, prepared_standins, moe):
    data = prepared_standins["cifar100"]
    both = run(tmp_path / "both", data, moe, seeds=(4, 5))
    alone = run(tmp_path / "alone", data, moe, seeds=(5,))
    a, b = metrics(both[1]), metrics(alone[0])
    assert list(a["metric"]) == list(b["metric"])
    torch.testing.assert_close(torch.tensor(a["value"].to_numpy()), torch.tensor(b["value"].to_numpy()), atol=1e-5, rtol=1e-4)
    names = set(a["metric"])
    assert {"test_accuracy/task_1", "test_accuracy/task_2", "avg_accuracy", "last_accuracy"} <= names
    if moe:
        assert {"ddas_zero_shot_fraction", "ddas_route_accuracy"} <= names


def test_zero_shot_trains_nothing_and_adapters_change_the_run(tmp_path, prepared_standins):
    data = prepared_standins["cifar100"]
    zs = metrics(run(tmp_path / "zs", data, {"mode": "zero_shot"})[0])
    assert "train_loss" not in set(zs["metric"])
    ad = metrics(run(tmp_path / "ad", data, {})[0])
    ft = metrics(run(tmp_path / "ft", data, {"mode": "full_finetune"})[0])
    row0 = lambda df: df[(df.metric == "test_accuracy/task_1") & (df.step == 0)]["value"].item()  # noqa: E731
    assert row0(zs) == row0(ad) == row0(ft)  # step 0 is CLIP before training for every method
    mag = lambda df: df[df.metric == "adapter_weight_magnitude"]["value"].to_numpy()  # noqa: E731
    assert mag(ad)[1] != mag(ad)[0] and mag(ft)[1] != mag(ft)[0]


@pytest.mark.parametrize(
    ("moe", "key"),
    [
        ({"experts": 2, "top_k": 3}, "top_k"),
        ({"routers": "per_task"}, "routers"),
        ({"mode": "zero_shot", "freeze_top": 1}, "mode"),
        ({"experts": 2, "freeze_top": 3}, "freeze_top"),
        ({"ddas": "sometimes"}, "ddas"),
    ],
)
def test_bad_moe_settings_are_rejected_naming_the_key(moe, key):
    with pytest.raises(ConfigError, match=rf"f\.yaml:m\.moe_adapters\.{key}"):
        from_dict(MethodConfig, {"moe_adapters": moe}, "f.yaml:m")


def test_other_experiments_reject_moe_adapters_and_moe_cifar_rejects_other_keys():
    cfg = from_dict(MethodConfig, {"moe_adapters": {"experts": 3}}, "m")
    with pytest.raises(ConfigError, match=r"moe_adapters.*moe_cifar"):
        check_supported(get_experiment("incremental_cifar"), cfg, "f.yaml:methods.m")
    cfg = from_dict(MethodConfig, {"optimizer": "sgd", "lr": 0.1, "momentum": 0.9}, "m")
    with pytest.raises(ConfigError, match=r"f\.yaml:methods\.m\.momentum"):
        check_supported(get_experiment("moe_cifar"), cfg, "f.yaml:methods.m")
    assert MoEAdaptersConfig().balance_weight == 0.01


def test_zero_shot_rejects_optimiser_settings(prepared_standins):
    spec = get_experiment("moe_cifar")
    prob = from_dict(spec.problem_cls, {**SMOKE, "data_dir": str(prepared_standins["cifar100"])}, "p")
    cfg = from_dict(MethodConfig, {"lr": 0.5, "moe_adapters": {"mode": "zero_shot"}}, "m")
    with pytest.raises(ConfigError, match=r"methods\.m\.lr.*zero_shot trains nothing"):
        spec.build(prob, [RunSpec("m", "d", {}, cfg, 0)], CPU)


def test_problem_needs_the_bpe_tokenizer_for_vit_b16_and_the_weights_file(tmp_path, prepared_standins):
    spec = get_experiment("moe_cifar")
    with pytest.raises(ConfigError, match=r"p\.tokenizer"):
        from_dict(spec.problem_cls, {"tokenizer": "bytes"}, "p")
    prob = from_dict(spec.problem_cls, {"data_dir": str(prepared_standins["cifar100"]), "weights": str(tmp_path / "none.pt")}, "p")
    cfg = from_dict(MethodConfig, {"optimizer": "adam", "lr": 1e-3}, "m")
    with pytest.raises(DataError, match=r"none\.pt: no CLIP weights file"):
        spec.build(prob, [RunSpec("m", "d", {}, cfg, 0)], CPU)


def test_resume_from_state_continues_identically(prepared_standins):
    """A trainer restored from another's state after task 1 trains task 2 exactly like the original
    (adapters, usage counts, frozen experts, optimiser, autoencoders, accuracy matrix)."""
    spec = get_experiment("moe_cifar")
    prob = from_dict(spec.problem_cls, {**SMOKE, "data_dir": str(prepared_standins["cifar100"])}, "p")
    moe = {"experts": 3, "top_k": 2, "routers": "per_task", "ddas": "per_sample", "freeze_top": 1, "ddas_steps_first": 5, "ddas_steps": 5}
    cfg = from_dict(MethodConfig, {"optimizer": "adam", "lr": 0.01, "moe_adapters": moe}, "m")
    runs = [RunSpec("m", "d", {}, cfg, 3)]
    a = spec.build(prob, runs, CPU)
    a.train_unit(0)
    assert bool(a.adapters.frozen["visual"].any())
    b = spec.build(prob, runs, CPU)
    b.load_state_dict({k: v for k, v in a.state_dict().items()})
    ma, mb = a.train_unit(1), b.train_unit(1)
    assert [m.name for m in ma] == [m.name for m in mb]
    for x, y in zip(ma, mb):
        assert torch.equal(x.values, y.values), x.name


@pytest.mark.slow
def test_smoke_scale_end_to_end_through_lop_run(tmp_path, prepared_standins, monkeypatch):
    """`lop run` on params/moe_cifar.yaml's smoke scale writes complete runs with the accuracy matrix."""
    from lop.cli import main

    root = Path(__file__).resolve().parents[1]
    (tmp_path / "data" / "prepared").mkdir(parents=True)
    (tmp_path / "data" / "prepared" / "cifar100-standin").symlink_to(prepared_standins["cifar100"])
    monkeypatch.chdir(tmp_path)
    for method in ("moe_ddas", "zero_shot"):
        rc = main(["run", "--params", str(root / "params/moe_cifar.yaml"), "--scale", "smoke", "--method", method,
                   "--setting-id", "default", "--seeds", "0,1", "--out", "out", "--no-progress"])  # fmt: skip
        assert rc in (0, None)
        for seed in (0, 1):
            d = tmp_path / "out" / method / "default" / f"seed-{seed}"
            assert '"status": "complete"' in (d / "run.json").read_text()
            from lop.cl_metrics import accuracy_matrix

            df = pd.read_parquet(d / "metrics.parquet")
            r = accuracy_matrix(zip(df.step, df.metric, df.value), n_tasks=2)
            assert r.shape == (3, 2) and not torch.isnan(torch.tensor(r[2])).any()


def test_demo_and_paper_scales_are_skipped_with_one_line_without_the_weights(tmp_path):
    from lop.params import load_params, missing_files, skip_line

    root = Path(__file__).resolve().parents[1]
    p = load_params(root / "params/moe_cifar.yaml")
    assert missing_files(p, "smoke", tmp_path) == []
    missing = missing_files(p, "demo", tmp_path)
    assert missing == ["data/clip/ViT-B-16.pt", "data/clip/bpe_simple_vocab_16e6.txt.gz"]
    line = skip_line(p, "demo", missing)
    assert "\n" not in line and "moe_cifar" in line and "docs/protocols/moe_cifar.md" in line
    for f in missing:
        (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f).write_bytes(b"x")
    assert missing_files(p, "demo", tmp_path) == []


def test_dormant_bottleneck_units_probe():
    """Units that never fire while probing count as dormant: one silenced expert in every image block =
    1/8 of all bottleneck units (4 experts × 2 blocks × 2 encoders)."""
    ad = adapters(seeds=(0,))
    with torch.no_grad():
        ad.params["visual.down.bias"][:, :, 0] = -1e3
    ad.ctx.probe = True
    for layer in range(2):
        ad("visual", layer, torch.randn(1, 16, 5, TINY.vision_width))
        ad("text", layer, torch.randn(1, 16, 5, TINY.text_width))
    assert float(ad.dormant_fraction()[0]) == pytest.approx(1 / 8)
    ad.reset_active()
    assert float(ad.dormant_fraction()[0]) == 1.0
