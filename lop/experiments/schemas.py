"""The schema side of every experiment, importable without torch: each experiment's problem dataclass
(the ``problem:`` settings of params and run files) and the `MethodConfig` keys it supports.

`lop params validate` and `lop.params.load_params` check params files against this module alone, so
validation does not import torch, the networks or the simulators (docs/reliability.md, "Cost of
validation"). Each experiment module re-exports its problem class from here and builds its
`lop.experiments.base.ExperimentSpec` from it; `tests/test_experiment_schemas.py` checks that every
experiment's spec and its entry in `SCHEMAS` agree (same problem class, same supported keys, as the
method layer derives them from the learner's hook points).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from lop.config import MethodConfig, check, optional_field
from lop.data.mtil_order import ORDER_I as MTIL_ORDER_I
from lop.errors import ConfigError

if TYPE_CHECKING:
    from lop.envs.config import EnvConfig
    from lop.rl.ppo import PPOSettings

Activation = Literal["sigmoid", "tanh", "relu", "leaky_relu", "elu", "swish", "selu"]
Scenario = Literal["task", "domain", "class"]  # task-incremental, domain-incremental, class-incremental
EnvName = Literal["ant", "slippery_ant", "hopper", "walker2d"]


@dataclass(frozen=True)
class RunSpec:
    """One run of a group: a (method, setting, seed) with its resolved method config."""

    method: str
    setting_id: str
    setting: dict[str, Any]
    config: MethodConfig
    seed: int


@dataclass(frozen=True)
class SCRProblem:
    """Problem settings; defaults are the paper's protocol (docs/protocols/scr.md)."""

    n_examples: int = 1_000_000
    flip_every: int = 10_000
    variant: Literal["one_bit", "resample_all"] = "one_bit"
    n_slow: int = 15
    n_fast: int = 5
    target_hidden: int = 100
    beta: float = 0.7
    hidden: int = 5
    activation: Activation = "relu"
    init: Literal["kaiming_uniform", "lecun_uniform", "torch_default"] = "kaiming_uniform"
    # Kaiming gain of the linear output layer: the hidden activation's (default) or 1 (the reference's)
    output_gain: Literal["activation", "linear"] = optional_field("activation")
    # hidden init of a SELU learner: as `init` (default) or PyTorch's default U(±1/√n), the reference's
    # (its SCR net initialises sigmoid/tanh/ReLU/leaky-ReLU/swish/ELU units explicitly, SELU units not)
    selu_hidden_init: Literal["as_init", "torch_default"] = optional_field("as_init")
    bin_size: int = 20_000
    chunk: int = 10_000

    def validate(self) -> list[tuple[str, str]]:
        return (
            check(self.n_examples > 0, "n_examples", "must be > 0")
            + check(self.flip_every > 0, "flip_every", "must be > 0")
            + check(self.n_slow > 0 and self.n_fast >= 0, "n_slow", "need n_slow > 0 and n_fast >= 0")
            + check(self.hidden > 0 and self.target_hidden > 0, "hidden", "layer sizes must be > 0")
            + check(
                self.bin_size > 0 and self.n_examples % self.bin_size == 0,
                "bin_size",
                "must divide n_examples",
            )
            + check(self.chunk > 0 and self.bin_size % self.chunk == 0, "chunk", "must divide bin_size")
        )


@dataclass(frozen=True)
class PermutedMNISTProblem:
    """Problem settings; defaults are the paper's protocol (docs/protocols/permuted_mnist.md)."""

    dataset: Literal["mnist", "digits"] = "mnist"
    data_dir: str = "data/prepared/mnist"
    n_examples: int = 0  # examples of the dataset used (0 = all: 60,000 MNIST / 1,797 digits)
    examples_per_task: int = 0  # the "change rate" (0 = one pass over the examples)
    n_tasks: int = 800
    width: int = 2000
    depth: int = 3
    activation: Literal["relu", "tanh", "sigmoid", "leaky_relu", "elu", "swish", "selu"] = "relu"
    init: Literal["kaiming_uniform", "lecun_uniform", "torch_default"] = "kaiming_uniform"
    # Kaiming gain of the linear output layer: the hidden activation's (default) or 1 (the reference's)
    output_gain: Literal["activation", "linear"] = optional_field("activation")
    unit_examples: int = 10_000  # checkpoint granularity; must divide examples_per_task
    chunk: int = 1_000  # examples gathered at once (memory/speed trade-off only)
    probe_examples: int = 2000
    probe_every: int = 1  # tasks between probes (0 = never)
    # task-average weight magnitude sampled every k examples (0 = off); see the module docstring
    weight_magnitude_every: int = optional_field(0)
    # also log effective rank as a fraction of width and dead units pooled over layers
    reference_internals: bool = optional_field(False)

    def validate(self) -> list[tuple[str, str]]:
        return (
            check(self.n_examples >= 0, "n_examples", "must be >= 0")
            + check(self.examples_per_task >= 0, "examples_per_task", "must be >= 0")
            + check(self.n_tasks > 0, "n_tasks", "must be > 0")
            + check(self.width > 0 and self.depth >= 1, "width", "need width > 0 and depth >= 1")
            + check(self.unit_examples > 0, "unit_examples", "must be > 0")
            + check(self.chunk > 0, "chunk", "must be > 0")
            + check(self.probe_examples > 0 and self.probe_every >= 0, "probe_examples", "must be > 0")
            + check(self.weight_magnitude_every >= 0, "weight_magnitude_every", "must be >= 0 (0 = off)")
        )


@dataclass(frozen=True)
class ContinualImageNetProblem:
    """Problem settings; defaults are the paper's protocol (docs/protocols/continual_imagenet.md)."""

    data_dir: str = "data/prepared/imagenet32"
    n_tasks: int = 5000
    epochs_per_task: int = 250
    batch_size: int = 100
    classes_per_task: int = 2
    n_classes: int = 0  # 0 = every class of the prepared artifact (1000)
    train_per_class: int = 600
    test_per_class: int = 100
    input_scale: Literal["unit", "raw"] = "unit"
    head_reset_clears_momentum: bool = False
    verify_data: bool = True
    channels_last: bool = True
    # "fresh": a new seeded class permutation every n_classes // classes_per_task tasks; "repeat": block
    # 0's permutation for every block, as the reference code ran it (docs/protocols/reference-differences.md)
    class_order: Literal["fresh", "repeat"] = optional_field("fresh")

    def validate(self) -> list[tuple[str, str]]:
        return (
            check(self.n_tasks > 0, "n_tasks", "must be > 0")
            + check(self.epochs_per_task > 0, "epochs_per_task", "must be > 0")
            + check(self.batch_size > 0, "batch_size", "must be > 0")
            + check(self.classes_per_task >= 2, "classes_per_task", "must be >= 2")
            + check(
                self.n_classes == 0 or self.n_classes >= self.classes_per_task,
                "n_classes",
                "must be 0 (all) or >= classes_per_task",
            )
            + check(self.train_per_class > 0, "train_per_class", "must be > 0")
            + check(self.test_per_class > 0, "test_per_class", "must be > 0")
        )


@dataclass(frozen=True)
class IncrementalCifarProblem:
    """Problem settings; defaults are the paper's protocol (docs/protocols/incremental_cifar.md)."""

    data_dir: str = "data/prepared/cifar100"
    n_classes: int = 100
    classes_start: int = 5
    classes_per_increment: int = 5
    n_increments: int = 20
    epochs_per_increment: int = 200
    batch_size: int = 90
    train_per_class: int = 450
    val_per_class: int = 50
    test_per_class: int = 100
    lr_milestones: tuple[int, ...] = (60, 120, 160)
    lr_factors: tuple[float, ...] = (0.2, 0.04, 0.008)
    early_stopping: bool = True
    augment: bool = True
    flip_p: float = 0.5
    crop_padding: int = 4
    rotation_degrees: tuple[float, float] = (0.0, 15.0)
    # nearest-neighbour as the reference's torchvision rotation; bilinear smooths (earlier default)
    rotation_interpolation: Literal["nearest", "bilinear"] = "nearest"
    image_size: Literal[32, 16, 8] = 32
    width: int = 64  # ResNet-18 stem/stage-1 channels; stages width·(1, 2, 4, 8), features 8·width
    resnet_init: Literal["reference", "torchvision"] = "reference"
    cbp_scope: Literal["chain", "block_internal"] = "chain"
    retrain_resets_running_stats: bool = True
    reset_optimizer_on_reinit: bool = True
    probe_images: int = 1000
    dormant_threshold: float = 0.01
    eval_batch: int = 500
    verify_data: bool = True
    channels_last: bool = True
    # also evaluate on augmented test images (the reference's test accuracy), under distinct metric names
    augmented_test: bool = optional_field(False)
    # the validation hold-out: the "last" images of each class in file order (the prepared artifact's
    # split) or the "first" ones, as the reference code split it (docs/protocols/reference-differences.md)
    validation_split: Literal["last", "first"] = optional_field("last")
    # BatchNorm during the probes (dormant units, ranks): "eval" (running statistics) or "train" (each
    # probe batch's own statistics, as the reference's analysis ran; the running statistics are restored)
    probe_bn: Literal["eval", "train"] = optional_field("eval")

    @property
    def n_epochs(self) -> int:
        return self.n_increments * self.epochs_per_increment

    def validate(self) -> list[tuple[str, str]]:
        last = self.classes_start + (self.n_increments - 1) * self.classes_per_increment
        return (
            check(self.classes_start > 0, "classes_start", "must be > 0")
            + check(self.classes_per_increment >= 0, "classes_per_increment", "must be >= 0")
            + check(self.n_increments > 0, "n_increments", "must be > 0")
            + check(
                last <= self.n_classes <= 100,
                "n_classes",
                f"must be <= 100 and hold classes_start + (n_increments - 1) * classes_per_increment = {last}",
            )
            + check(self.epochs_per_increment > 0, "epochs_per_increment", "must be > 0")
            + check(self.batch_size > 0, "batch_size", "must be > 0")
            + check(self.width >= 1, "width", "must be >= 1 (64 is the paper's ResNet-18)")
            + check(
                min(self.train_per_class, self.val_per_class, self.test_per_class) > 0,
                "train_per_class",
                "train/val/test images per class must be > 0",
            )
            + check(
                len(self.lr_milestones) == len(self.lr_factors)
                and list(self.lr_milestones) == sorted(self.lr_milestones)
                and all(0 < m < self.epochs_per_increment for m in self.lr_milestones),
                "lr_milestones",
                "need increasing epochs inside an increment, one per lr_factors entry",
            )
            + check(all(f > 0 for f in self.lr_factors), "lr_factors", "must be > 0")
            + check(0.0 <= self.flip_p <= 1.0, "flip_p", "must be within [0, 1]")
            + check(0 <= self.crop_padding < 32, "crop_padding", "must be within [0, 32)")
            + check(self.rotation_degrees[0] <= self.rotation_degrees[1], "rotation_degrees", "low <= high")
            + check(self.probe_images > 0, "probe_images", "must be > 0")
            + check(0.0 <= self.dormant_threshold <= 1.0, "dormant_threshold", "must be within [0, 1]")
            + check(self.eval_batch > 0, "eval_batch", "must be > 0")
        )


def _sample_checks(p: CLPermutedMNISTProblem | CLSplitMNISTProblem) -> list[tuple[str, str]]:
    """The digit experiments' sample sizes: ``n_train`` and ``n_test`` >= 0 (0 = all)."""
    return check(p.n_train >= 0, "n_train", "must be >= 0 (0 = all)") + check(
        p.n_test >= 0, "n_test", "must be >= 0 (0 = all)"
    )


def _schedule_checks(
    p: CLPermutedMNISTProblem | CLSplitMNISTProblem | CLSplitCIFAR100Problem,
) -> list[tuple[str, str]]:
    """The task-sequence problems' schedule: ``epochs_per_task``, ``batch_size``, ``probe_examples`` and
    ``eval_batch`` > 0, in that order."""
    return (
        check(p.epochs_per_task > 0, "epochs_per_task", "must be > 0")
        + check(p.batch_size > 0, "batch_size", "must be > 0")
        + check(p.probe_examples > 0, "probe_examples", "must be > 0")
        + check(p.eval_batch > 0, "eval_batch", "must be > 0")
    )


@dataclass(frozen=True)
class CLPermutedMNISTProblem:
    """Problem settings; defaults are Zenke et al.'s permuted-MNIST protocol."""

    dataset: Literal["mnist", "digits"] = "mnist"
    data_dir: str = "data/prepared/mnist"
    n_train: int = 0  # training examples used (0 = all: 60,000 MNIST / 1,437 digits)
    n_test: int = 0  # test examples used (0 = all: 10,000 MNIST / 360 digits)
    n_tasks: int = 10
    width: int = 2000
    depth: int = 2
    activation: Literal["relu", "tanh", "sigmoid", "leaky_relu", "elu", "swish", "selu"] = "relu"
    init: Literal["kaiming_uniform", "lecun_uniform", "torch_default"] = "kaiming_uniform"
    scenario: Scenario = "domain"
    epochs_per_task: int = 20
    batch_size: int = 256
    reset_optimizer: bool = False  # zero the optimiser state at every task start
    probe_examples: int = 500
    eval_batch: int = 2000

    def validate(self) -> list[tuple[str, str]]:
        return (
            _sample_checks(self)
            + check(self.n_tasks > 0, "n_tasks", "must be > 0")
            + check(self.width > 0 and self.depth >= 1, "width", "need width > 0 and depth >= 1")
            + _schedule_checks(self)
        )


@dataclass(frozen=True)
class CLLongStreamProblem(CLPermutedMNISTProblem):
    """`CLPermutedMNISTProblem` with the long stream's defaults."""

    dataset: Literal["mnist", "digits"] = "digits"
    n_tasks: int = 100
    width: int = 100
    epochs_per_task: int = 3
    batch_size: int = 64
    probe_examples: int = 360


@dataclass(frozen=True)
class CLSplitMNISTProblem:
    """Problem settings; defaults are Zenke et al.'s split-MNIST protocol (task-incremental)."""

    dataset: Literal["mnist", "digits"] = "mnist"
    data_dir: str = "data/prepared/mnist"
    n_train: int = 0  # training examples used (0 = all)
    n_test: int = 0  # test examples used (0 = all)
    n_tasks: int = 5
    classes_per_task: int = 2
    width: int = 256
    depth: int = 2
    activation: Literal["relu", "tanh", "sigmoid", "leaky_relu", "elu", "swish", "selu"] = "relu"
    init: Literal["kaiming_uniform", "lecun_uniform", "torch_default"] = "kaiming_uniform"
    scenario: Scenario = "task"
    epochs_per_task: int = 10
    batch_size: int = 64
    reset_optimizer: bool = True
    probe_examples: int = 500
    eval_batch: int = 2000
    output_init: Literal["default", "zero"] = optional_field("default")  # zero: Zenke et al.'s output layer

    def validate(self) -> list[tuple[str, str]]:
        return (
            _sample_checks(self)
            + check(self.classes_per_task >= 2, "classes_per_task", "must be >= 2")
            + check(
                0 < self.n_tasks * self.classes_per_task <= 10,
                "n_tasks",
                "n_tasks × classes_per_task must be within 1..10 (the digits)",
            )
            + check(self.width > 0 and self.depth >= 1, "width", "need width > 0 and depth >= 1")
            + _schedule_checks(self)
        )


@dataclass(frozen=True)
class CLSplitCIFAR100Problem:
    """Problem settings; defaults are the 10 × 10 split of CIFAR-100 with Zenke et al.'s schedule."""

    data_dir: str = "data/prepared/cifar100"
    n_tasks: int = 10
    classes_per_task: int = 10
    train_per_class: int = 0  # training images per class used (0 = all 500)
    test_per_class: int = 0  # test images per class used (0 = all 100)
    scenario: Scenario = "task"
    epochs_per_task: int = 60
    batch_size: int = 256
    reset_optimizer: bool = True
    probe_examples: int = 500
    eval_batch: int = 1000
    verify_data: bool = True
    # task 1 = CIFAR-10 (Zenke et al.'s variant) or CIFAR-100's first classes (the plain split)
    first_task: Literal["cifar100", "cifar10"] = optional_field("cifar100")
    cifar10_dir: str = optional_field("")  # the prepared CIFAR-10 read by first_task: cifar10
    net: Literal["convnet", "zenke"] = optional_field("convnet")
    output_init: Literal["default", "zero"] = optional_field("default")

    def validate(self) -> list[tuple[str, str]]:
        c10 = self.first_task == "cifar10"
        n_c100 = (self.n_tasks - 1 if c10 else self.n_tasks) * self.classes_per_task
        return (
            check(self.classes_per_task >= 2, "classes_per_task", "must be >= 2")
            + check(
                self.n_tasks > 0 and 0 <= n_c100 <= 100,
                "n_tasks",
                "n_tasks × classes_per_task must be within 1..100 (the classes; with first_task: cifar10 "
                "the CIFAR-100 tasks are n_tasks − 1)",
            )
            + check(
                not c10 or self.classes_per_task == 10,
                "classes_per_task",
                "must be 10 with first_task: cifar10 (task 1 is CIFAR-10's 10 classes)",
            )
            + check(
                not c10 or bool(self.cifar10_dir),
                "cifar10_dir",
                "first_task: cifar10 reads the prepared CIFAR-10: set it (e.g. data/prepared/cifar10)",
            )
            + check(
                c10 or not self.cifar10_dir,
                "cifar10_dir",
                "is read only with first_task: cifar10; set first_task: cifar10 or remove cifar10_dir",
            )
            + check(self.train_per_class >= 0, "train_per_class", "must be >= 0 (0 = all)")
            + check(self.test_per_class >= 0, "test_per_class", "must be >= 0 (0 = all)")
            + _schedule_checks(self)
        )


def _clip_checks(p: MoECifarProblem | MoEMtilProblem) -> list[tuple[str, str]]:
    """The CLIP experiments' prompt (exactly one ``{}``), tokenizer (BPE for the ViT-B/16 weights) and
    ``eval_batch`` >= 1, in that order."""
    return (
        check(p.prompt.count("{}") == 1, "prompt", "needs exactly one {} for the class name")
        + check(
            p.backbone == "tiny" or p.tokenizer == "bpe",
            "tokenizer",
            "the ViT-B/16 weights need CLIP's BPE tokenizer (tokenizer: bpe)",
        )
        + check(p.eval_batch >= 1, "eval_batch", "must be >= 1")
    )


@dataclass(frozen=True)
class MoECifarProblem:
    """Problem settings; defaults are the paper's protocol at 10 steps (docs/protocols/moe_cifar.md)."""

    data_dir: str = "data/prepared/cifar100"
    n_steps: int = 10
    n_classes: int = 100  # the first n_classes of the class order (fewer only for small scales)
    epochs_per_step: int = 1
    batch_size: int = 128
    train_per_class: int = 450
    val_per_class: int = 50  # the 50 validation images of the prepared split are trained on too
    test_per_class: int = 100
    backbone: Literal["vit_b16", "tiny"] = "vit_b16"
    weights: str = "data/clip/ViT-B-16.pt"
    vocab: str = "data/clip/bpe_simple_vocab_16e6.txt.gz"
    tokenizer: Literal["bpe", "bytes"] = "bpe"
    backbone_seed: int = 0  # the random tiny backbone (shared by all runs)
    prompt: str = "a bad photo of a {}."
    eval_batch: int = 250
    verify_data: bool = True

    @property
    def classes_per_step(self) -> int:
        return self.n_classes // self.n_steps

    def validate(self) -> list[tuple[str, str]]:
        return (
            check(self.n_steps >= 1, "n_steps", "must be >= 1")
            + check(
                1 <= self.n_classes <= 100 and self.n_classes % max(self.n_steps, 1) == 0,
                "n_classes",
                f"must be within [1, 100] and a multiple of n_steps = {self.n_steps}",
            )
            + check(self.epochs_per_step >= 1, "epochs_per_step", "must be >= 1")
            + check(self.batch_size >= 1, "batch_size", "must be >= 1")
            + check(
                min(self.train_per_class, self.test_per_class) >= 1,
                "train_per_class",
                "train/test images per class must be >= 1",
            )
            + check(
                self.val_per_class >= 1,
                "val_per_class",
                "must be >= 1 (the prepared split's validation images)",
            )
            + _clip_checks(self)
        )


@dataclass(frozen=True)
class MoECifar20Problem(MoECifarProblem):
    """The 20-step protocol (5 classes per task)."""

    n_steps: int = 20


@dataclass(frozen=True)
class MoECifar50Problem(MoECifarProblem):
    """The 50-step protocol (2 classes per task, batch 64)."""

    n_steps: int = 50
    batch_size: int = 64


@dataclass(frozen=True)
class BudgetedCLProblem:
    """Problem settings; defaults are the small-scale CIFAR-100 protocol (docs/protocols/budgeted_cl.md)."""

    dataset: Literal["cifar100", "digits"] = "cifar100"
    data_dir: str = "data/prepared/cifar100"
    n_classes: int = 100
    scenario: Literal["class", "data"] = "class"
    n_steps: int = 10
    iterations: int = 35  # C: ≈ 2 passes over a step's 2,250 new examples at B = 128
    batch_size: int = 128
    budget_factor: float = 1.0
    train_per_class: int = 450
    test_per_class: int = 100
    store_logits: bool = False
    val_per_class: int = 10  # BiC: held-out stored examples per class
    augment: bool = True
    image_size: Literal[32, 16, 8] = 32
    width: int = 64  # ResNet-18 stage-1 channels / MLP hidden units
    depth: int = 2  # MLP hidden layers (digits)
    pretrained: str = ""  # checkpoint of `lop pretrain`; "" = pretrain in the process
    pretrain_seed: int = 0
    pretrain_epochs: int = 30
    pretrain_lr: float = 0.1
    pretrain_batch: int = 128
    probe_examples: int = 500
    eval_batch: int = 500
    verify_data: bool = True

    def validate(self) -> list[tuple[str, str]]:
        n_stream = self.n_classes - self.n_classes // 2
        top = 10 if self.dataset == "digits" else 100
        return (
            check(2 <= self.n_classes <= top, "n_classes", f"must be within [2, {top}] for {self.dataset}")
            + check(self.n_steps >= 1, "n_steps", "must be >= 1")
            + check(
                self.scenario != "class" or n_stream % self.n_steps == 0,
                "n_steps",
                f"class-incremental steps must split the {n_stream} stream classes evenly",
            )
            + check(
                self.scenario != "data" or n_stream * self.train_per_class >= self.n_steps,
                "n_steps",
                "more data-incremental steps than stream examples",
            )
            + check(
                self.iterations >= 1, "iterations", "must be >= 1 (the budget is iterations × batch_size)"
            )
            + check(self.batch_size >= 1, "batch_size", "must be >= 1")
            + check(self.budget_factor > 0, "budget_factor", "the budget must be > 0 (e.g. 0.25, 1, 4)")
            + check(min(self.train_per_class, self.test_per_class) >= 1, "train_per_class", "must be >= 1")
            + check(self.val_per_class >= 1, "val_per_class", "must be >= 1")
            + check(self.width >= 1 and self.depth >= 1, "width", "width and depth must be >= 1")
            + check(self.pretrain_epochs >= 1, "pretrain_epochs", "must be >= 1")
            + check(self.pretrain_lr > 0, "pretrain_lr", "must be > 0")
            + check(self.pretrain_batch >= 1, "pretrain_batch", "must be >= 1")
            + check(self.probe_examples >= 2, "probe_examples", "must be >= 2")
            + check(self.eval_batch >= 1, "eval_batch", "must be >= 1")
        )


@dataclass(frozen=True)
class PPOProblem:
    """Problem settings of the PPO experiments; defaults are docs/protocols/ppo.md (subclasses set env/steps).

    Environment (`lop.envs.EnvConfig`): ``env``, ``max_episode_steps``, ``friction_low``/``high``,
    ``change_every``, ``friction_mix``, ``clip_actions``, ``sim_kwargs``. PPO: ``total_steps`` per run
    (the last update may overshoot: ⌈total/rollout⌉ updates), ``rollout``, ``epochs``, ``minibatch``
    (must divide the rollout), ``gamma``, ``lam``, ``clip``, ``value_coef``, ``truncation_as_terminal``
    (GAE at a time-limit end: False bootstraps from V(final observation), True treats it as terminal
    as the reference code did). Agent: ``hidden`` sizes,
    ``log_std_init``. Internals: every ``internals_every`` updates on the last ``probe_steps`` steps,
    dormant = active on ≤ ``dormant_threshold`` of them, rank threshold ``rank_threshold``.
    """

    env: EnvName = "ant"
    max_episode_steps: int = 1000
    friction_low: float = 0.02
    friction_high: float = 2.0
    change_every: int = 2_000_000
    friction_mix: Literal["all", "floor", "max"] = "all"
    clip_actions: bool = False
    sim_kwargs: dict[str, Any] = field(default_factory=dict)
    total_steps: int = 50_000_000
    rollout: int = 2048
    epochs: int = 10
    minibatch: int = 128
    gamma: float = 0.99
    lam: float = 0.95
    clip: float = 0.2
    value_coef: float = 1.0
    # time-limit truncation in GAE: bootstrap (default) or terminal, as the reference (`PPOSettings`)
    truncation_as_terminal: bool = optional_field(False)
    hidden: tuple[int, ...] = (256, 256)
    log_std_init: float = 0.0
    internals_every: int = 10
    probe_steps: int = 1000
    dormant_threshold: float = 0.01
    rank_threshold: float = 0.99

    def env_config(self) -> EnvConfig:
        """The `EnvConfig` of these settings (raises `ConfigError` keyed ``env.<field>``)."""
        from lop.envs.config import EnvConfig

        keys = {f.name for f in dataclasses.fields(EnvConfig)} - {"name"}
        return EnvConfig(name=self.env, **{k: getattr(self, k) for k in keys})

    def ppo_settings(self) -> PPOSettings:
        """The PPO hyperparameters among these settings (same field names as `PPOSettings`)."""
        from lop.rl.ppo import PPOSettings

        return PPOSettings(**{f.name: getattr(self, f.name) for f in dataclasses.fields(PPOSettings)})

    @property
    def n_updates(self) -> int:
        return math.ceil(self.total_steps / self.rollout)

    def validate(self) -> list[tuple[str, str]]:
        errors = (
            check(self.total_steps > 0, "total_steps", "must be > 0")
            + check(self.rollout > 0, "rollout", "env steps per update must be > 0")
            + check(self.epochs > 0, "epochs", "must be > 0")
            + check(self.minibatch > 0, "minibatch", "must be > 0")
            + check(
                self.rollout <= 0 or self.minibatch <= 0 or self.rollout % self.minibatch == 0,
                "minibatch",
                f"must divide the rollout ({self.rollout} steps); e.g. 128 for 2048",
            )
            + check(0.0 < self.gamma <= 1.0, "gamma", "must be within (0, 1]")
            + check(0.0 <= self.lam <= 1.0, "lam", "must be within [0, 1]")
            + check(self.clip > 0.0, "clip", "must be > 0")
            + check(self.value_coef >= 0.0, "value_coef", "must be >= 0")
            + check(
                len(self.hidden) > 0 and all(h > 0 for h in self.hidden),
                "hidden",
                "need >= 1 layer, sizes > 0",
            )
            + check(self.internals_every > 0, "internals_every", "must be > 0")
            + check(
                0 < self.probe_steps <= max(self.rollout, 1),
                "probe_steps",
                f"must be within [1, rollout={self.rollout}]",
            )
            + check(0.0 <= self.dormant_threshold <= 1.0, "dormant_threshold", "must be within [0, 1]")
            + check(0.0 < self.rank_threshold <= 1.0, "rank_threshold", "must be within (0, 1]")
        )
        return errors + self._env_errors()

    def _env_errors(self) -> list[tuple[str, str]]:
        try:
            config = self.env_config()
        except ConfigError as e:
            key = e.where.removeprefix("env.")
            key = "env" if key == "name" else key
            return [(key, str(e).removeprefix(f"{e.where}: "))]
        if not config.sim_kwargs:  # nothing to check against the simulator's signature: no import
            missing = [m for m in ("gymnasium", "mujoco") if importlib.util.find_spec(m) is None]
            if missing:
                return [("env", f"{config.name!r} needs gymnasium[mujoco]: pip install -e '.[rl]'")]
            return []
        from lop.envs.mujoco_envs import _sim_class, _sim_kwargs

        try:
            _sim_kwargs(config, _sim_class(config.name))
        except ConfigError as e:
            return [("sim_kwargs", str(e).removeprefix(f"{e.where}: "))]
        return []


@dataclass(frozen=True)
class SlipperyAntProblem(PPOProblem):
    """Fig. 3: slippery Ant, friction redrawn every 2M steps, 20M steps per run."""

    env: EnvName = "slippery_ant"
    total_steps: int = 20_000_000


@dataclass(frozen=True)
class AntProblem(PPOProblem):
    """Fig. 4: stationary Ant, 50M steps per run."""

    env: EnvName = "ant"
    total_steps: int = 50_000_000


@dataclass(frozen=True)
class MujocoProblem(PPOProblem):
    """Extended Data Fig. 5: Hopper / Walker2d (``env``), 50M steps (the length the paper leaves open)."""

    env: EnvName = "hopper"
    total_steps: int = 50_000_000


# the published per-task learning rates divided by the method's 1e-3 (Order I)
PAPER_LR_FACTORS = (5.0, 1.0, 5.0, 1.0, 0.1, 1.0, 1.0, 0.1, 1.0, 1.0, 1.0)


@dataclass(frozen=True)
class MoEMtilProblem:
    """Problem settings; defaults are the published MTIL Order I protocol (docs/protocols/moe_mtil.md)."""

    data_dir: str = "data/prepared/mtil"
    datasets: tuple[str, ...] = MTIL_ORDER_I
    iterations: int = 1000
    batch_size: int = 64
    lr_factors: tuple[float, ...] = PAPER_LR_FACTORS
    train_limit: int = 0  # images per task kept for training (0 = all; else evenly spaced over the file)
    test_limit: int = 0  # the same for the test images
    backbone: Literal["vit_b16", "tiny"] = "vit_b16"
    weights: str = "data/clip/ViT-B-16.pt"
    vocab: str = "data/clip/bpe_simple_vocab_16e6.txt.gz"
    tokenizer: Literal["bpe", "bytes"] = "bpe"
    backbone_seed: int = 0  # the random tiny backbone (shared by all runs)
    prompt: str = "a photo of a {}."
    eval_batch: int = 250
    verify_data: bool = True

    def validate(self) -> list[tuple[str, str]]:
        unknown = [d for d in self.datasets if d not in MTIL_ORDER_I]
        return (
            check(
                len(self.datasets) >= 1 and not unknown,
                "datasets",
                f"must be names from {', '.join(MTIL_ORDER_I)}",
            )
            + check(len(set(self.datasets)) == len(self.datasets), "datasets", "must not repeat a dataset")
            + check(
                len(self.lr_factors) == len(self.datasets) and all(f > 0 for f in self.lr_factors),
                "lr_factors",
                f"needs one positive factor per dataset ({len(self.datasets)})",
            )
            + check(self.iterations >= 1, "iterations", "must be >= 1")
            + check(self.batch_size >= 1, "batch_size", "must be >= 1")
            + check(
                min(self.train_limit, self.test_limit) >= 0, "train_limit", "limits must be >= 0 (0 = all)"
            )
            + _clip_checks(self)
        )


@dataclass(frozen=True)
class ExperimentSchema:
    """What validation needs of an experiment: its problem dataclass and the `MethodConfig` keys it
    supports (any other key set to a non-default value is rejected before training)."""

    name: str
    problem_cls: type
    supports: frozenset[str]
    # the learner builds a fused optimiser kernel (PPO's Adam): runs without a unit-resetting method
    # (CBP) cannot be packed with runs using it, since they would lose the fused kernel (`pack_methods`)
    fused_optimizer: bool = False


_OPTIMISER = ("betas", "eps", "lr", "momentum", "noise_std", "optimizer", "weight_decay")
_MINIBATCH = frozenset((*_OPTIMISER, "cbp", "l2_init"))  # MinibatchLearner / OnlineMLPLearner hooks
_TASK_SEQUENCE = _MINIBATCH | {"ewc", "joint", "lwf", "redo", "replay", "si"}
_PPO = _MINIBATCH | {"redo"}
_MOE = frozenset(("betas", "eps", "lr", "moe_adapters", "optimizer", "weight_decay"))

SCHEMAS: dict[str, ExperimentSchema] = {
    s.name: s
    for s in (
        ExperimentSchema(
            "budgeted_cl",
            BudgetedCLProblem,
            frozenset((*_OPTIMISER, "distill", "fc_correction", "l2_init", "sampler")),
        ),
        ExperimentSchema("cl_long_stream", CLLongStreamProblem, _TASK_SEQUENCE | {"den"}),
        ExperimentSchema("cl_permuted_mnist", CLPermutedMNISTProblem, _TASK_SEQUENCE | {"den"}),
        ExperimentSchema("cl_split_cifar100", CLSplitCIFAR100Problem, _TASK_SEQUENCE),
        ExperimentSchema("cl_split_mnist", CLSplitMNISTProblem, _TASK_SEQUENCE | {"den"}),
        ExperimentSchema("continual_imagenet", ContinualImageNetProblem, _MINIBATCH | {"arch"}),
        ExperimentSchema(
            "incremental_cifar", IncrementalCifarProblem, _MINIBATCH | {"head_reset", "retrain"}
        ),
        ExperimentSchema("moe_cifar", MoECifarProblem, _MOE),
        ExperimentSchema("moe_cifar_20", MoECifar20Problem, _MOE),
        ExperimentSchema("moe_cifar_50", MoECifar50Problem, _MOE),
        ExperimentSchema("moe_mtil", MoEMtilProblem, _MOE),
        ExperimentSchema("permuted_mnist", PermutedMNISTProblem, _MINIBATCH | {"arch"}),
        ExperimentSchema("ppo_ant", AntProblem, _PPO, fused_optimizer=True),
        ExperimentSchema("ppo_mujoco", MujocoProblem, _PPO, fused_optimizer=True),
        ExperimentSchema("ppo_slippery_ant", SlipperyAntProblem, _PPO, fused_optimizer=True),
        ExperimentSchema("scr", SCRProblem, _MINIBATCH | {"arch"}),
    )
}


def get_schema(name: str) -> ExperimentSchema:
    """The schema of experiment `name`; `ConfigError` naming the known experiments otherwise."""
    if not isinstance(name, str) or name not in SCHEMAS:
        raise ConfigError("experiment", f"unknown experiment {name!r}; known: {', '.join(sorted(SCHEMAS))}")
    return SCHEMAS[name]


def set_method_keys(config: MethodConfig) -> list[str]:
    """The `MethodConfig` keys `config` sets to something other than their defaults."""
    out = []
    for f in dataclasses.fields(config):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        if getattr(config, f.name) != default:
            out.append(f.name)
    return out


def check_supported(spec: Any, config: MethodConfig, where: str) -> None:
    """Raise `ConfigError` at ``<where>.<key>`` for the first method key `spec` (an `ExperimentSchema` or
    an `ExperimentSpec`: anything with ``name`` and ``supports``) does not support, naming the
    experiments that do."""
    for key in set_method_keys(config):
        if key in spec.supports:
            continue
        others = sorted(name for name, e in SCHEMAS.items() if key in e.supports)
        hint = f"experiments that support it: {', '.join(others)}" if others else "no experiment supports it"
        raise ConfigError(
            f"{where}.{key}",
            f"not supported by experiment {spec.name} (it would be ignored); remove it ({hint})",
        )
