"""The ``lop data`` command group: download, prepare, standin, verify (see docs/data.md)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from lop.errors import DataError

# The dataset modules (numpy) are imported by the commands that use them, so that building the `lop`
# parser stays light.
DATASETS = ("mnist", "cifar10", "cifar100", "imagenet32")


def raw_files() -> dict[str, dict[str, str | None]]:
    """The official raw file names of each dataset and their md5 (None: no published checksum)."""
    from lop.data import cifar10, cifar100, imagenet32, mnist

    return {
        "mnist": dict(mnist.FILES),
        "cifar10": {cifar10.ARCHIVE: cifar10.MD5},
        "cifar100": {cifar100.ARCHIVE: cifar100.MD5},
        "imagenet32": {imagenet32.ZIP_NAME: None},
    }


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def _download(args: argparse.Namespace) -> int:
    from lop.data import cifar10, cifar100, imagenet32, mnist

    raw = Path(args.raw)
    if args.dataset == "mnist":
        paths = mnist.download_mnist(raw, args.url, timeout=args.timeout)
    elif args.dataset == "cifar10":
        paths = [cifar10.download_cifar10(raw, args.url or cifar10.URL, timeout=args.timeout)]
    elif args.dataset == "cifar100":
        paths = [cifar100.download_cifar100(raw, args.url or cifar100.URL, timeout=args.timeout)]
    else:
        raise DataError(imagenet32.licence_help(raw))
    for p in paths:
        print(f"ok: {p} (md5 verified)")
    return 0


def _prepare(args: argparse.Namespace) -> int:
    from lop.data import cifar10, cifar100, imagenet32, mnist
    from lop.data.artifact import verify_artifact

    raw, out = Path(args.raw), Path(args.out)
    if args.dataset != "imagenet32" and (args.image_folder or args.per_class or args.n_train):
        raise DataError(f"--image-folder/--per-class/--n-train apply to imagenet32 only, not {args.dataset}")
    if args.dataset == "mnist":
        path = mnist.prepare_mnist(raw, out)
    elif args.dataset == "cifar10":
        path = cifar10.prepare_cifar10(raw, out)
    elif args.dataset == "cifar100":
        path = cifar100.prepare_cifar100(raw, out)
    else:
        path = imagenet32.prepare_imagenet32(
            raw, out, image_folder=args.image_folder, per_class=args.per_class, n_train=args.n_train
        )
    m = verify_artifact(path) if args.verify else {"source": "?", "files": {}}
    print(f"ok: prepared {args.dataset} ({m['source']}) in {path}")
    return 0


def _standin(args: argparse.Namespace) -> int:
    if args.dataset == "mtil":  # user-prepared datasets: the stand-in is written in the prepared layout
        from lop.data import mtil

        mtil.write_mtil_standin(Path(args.raw), seed=args.seed)
        print(
            f"ok: stand-ins for the {len(mtil.ORDER_I)} MTIL datasets written to {Path(args.raw)}; NOT real data"
        )
        return 0
    from lop.data import standins

    info = standins.write_standin(args.dataset, Path(args.raw), size=args.size, seed=args.seed)
    print(
        f"ok: {args.size} stand-in for {args.dataset} written to {Path(args.raw)} ({info.name}); NOT real data"
    )
    return 0


def verify_raw(raw_dir: Path) -> tuple[str, str]:
    """Identify, md5-check and content-check a raw folder; return ``(dataset, source)``.

    md5s alone only trust ``standin.json`` (a forger rewrites it with the file), so the content is
    checked too: MNIST's IDX headers, sizes and labels; CIFAR-100 and ImageNet32 are converted into a
    temporary artifact that is thrown away (record sizes, label ranges, per-class counts, batch shapes).
    A stand-in of a pinned (dataset, seed, size) must also have its pinned md5s (`lop.data.standin_pins`).
    """
    import tempfile

    from lop.data import cifar10, cifar100, imagenet32, mnist
    from lop.data.artifact import MANIFEST
    from lop.data.raw import identify_raw
    from lop.data.standin_pins import check_raw_standin

    for dataset, files in raw_files().items():
        if all((raw_dir / name).is_file() for name in files):
            source, standin, md5s = identify_raw(
                raw_dir, files, dataset, missing="", fix=f"delete it and fetch or regenerate {dataset}"
            )
            if standin is not None:
                check_raw_standin(raw_dir, standin, md5s)
            if dataset == "mnist":
                mnist.read_raw_arrays(raw_dir, *mnist.split_sizes(raw_dir, standin))
            else:
                prepare = {
                    "cifar10": cifar10.prepare_cifar10,
                    "cifar100": cifar100.prepare_cifar100,
                    "imagenet32": imagenet32.prepare_imagenet32,
                }[dataset]
                with tempfile.TemporaryDirectory(prefix="lop-verify-") as tmp:
                    prepare(raw_dir, Path(tmp) / dataset)
            return dataset, source
    raise DataError(
        f"{raw_dir}: neither a prepared artifact ({MANIFEST}) nor a raw folder of mnist/cifar100/imagenet32 "
        "files; give a data/prepared/<name> or data/raw/<name> folder"
    )


def verify_prepared(folder: Path) -> dict[str, Any]:
    """sha256, shape and dtype of every listed file, then the dataset's own content checks and, for an
    artifact prepared from a pinned stand-in, the pinned sha256s; returns the manifest."""
    from lop.data import cifar10, cifar100, imagenet32, mnist
    from lop.data.artifact import MANIFEST, verify_artifact
    from lop.data.standin_pins import check_prepared_standin

    m: dict[str, Any] = verify_artifact(folder)
    checks = {
        "mnist": mnist.verify_prepared,
        "cifar10": cifar10.verify_prepared,
        "cifar100": cifar100.verify_prepared,
        "imagenet32": imagenet32.verify_prepared,
    }
    if m["dataset"] not in checks:
        raise DataError(
            f"{folder / MANIFEST}: unknown dataset {m['dataset']!r}; expected one of {', '.join(DATASETS)}"
        )
    checks[m["dataset"]](folder, m)
    check_prepared_standin(folder, m)
    return m


def _verify(args: argparse.Namespace) -> int:
    from lop.data.artifact import MANIFEST

    folder = Path(args.dir)
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder; give a data/prepared/<name> or data/raw/<name> folder")
    if (folder / MANIFEST).is_file():
        m = verify_prepared(folder)
        print(
            f"ok: prepared {m['dataset']} ({m['source']}), {len(m['files'])} files verified "
            f"(sha256, layout, counts) in {folder}"
        )
    else:
        dataset, source = verify_raw(folder)
        print(f"ok: raw {dataset} ({source}) in {folder}, md5 and content verified")
    return 0


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``data`` command group to an argparse subparsers object; leaves set ``func(args) -> int``."""
    data = subparsers.add_parser("data", help="download, prepare and verify datasets; write stand-ins")
    sub = data.add_subparsers(dest="data_command", required=True, metavar="{download,prepare,standin,verify}")

    p = sub.add_parser("download", help="download official raw files (md5-verified)")
    p.add_argument("dataset", choices=DATASETS)
    p.add_argument("--raw", required=True, help="raw folder, e.g. data/raw/mnist")
    p.add_argument(
        "--url",
        default=None,
        help="base URL (mnist) or archive URL (cifar10, cifar100) instead of the mirrors",
    )
    p.add_argument("--timeout", type=float, default=60.0, help="network timeout in seconds")
    p.set_defaults(func=_download)

    p = sub.add_parser("prepare", help="verify raw files and write the prepared artifact")
    p.add_argument("dataset", choices=DATASETS)
    p.add_argument("--raw", required=True, help="raw folder, e.g. data/raw/mnist")
    p.add_argument("--out", required=True, help="prepared folder, e.g. data/prepared/mnist")
    p.add_argument("--image-folder", default=None, help="imagenet32: <root>/<wnid>/*.JPEG instead of the zip")
    p.add_argument(
        "--per-class", type=_positive, default=None, help="imagenet32: images kept per class (700)"
    )
    p.add_argument(
        "--n-train", type=_positive, default=None, help="imagenet32: training images per class (600)"
    )
    p.add_argument("--no-verify", dest="verify", action="store_false", help="skip re-reading the artifact")
    p.set_defaults(func=_prepare)

    p = sub.add_parser("standin", help="write a learnable stand-in in the official raw format")
    p.add_argument("dataset", choices=(*DATASETS, "mtil"))
    p.add_argument(
        "--raw", required=True, help="raw folder to write, e.g. data/raw/mnist (mtil: the prepared folder)"
    )
    p.add_argument("--size", choices=("small", "demo"), default="small")
    p.add_argument("--seed", type=_non_negative, default=0)
    p.set_defaults(func=_standin)

    p = sub.add_parser("verify", help="verify a prepared artifact (sha256) or a raw folder (md5)")
    p.add_argument("dir", help="a data/prepared/<name> or data/raw/<name> folder")
    p.set_defaults(func=_verify)
    return data
