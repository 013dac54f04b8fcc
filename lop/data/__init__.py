"""Data layer: download, verify and convert the paper's datasets (docs/protocols/datasets.md) into prepared artifacts.

The training code loads only the prepared artifacts under ``data/prepared/<name>/`` through
`lop.data.mnist.load_mnist`, `lop.data.cifar10.load_cifar10`, `lop.data.cifar100.load_cifar100` and `lop.data.imagenet32.load_imagenet32`
(numpy arrays, sha256-verified against ``manifest.json``). `lop.data.standins` writes learnable stand-ins
in the exact official raw formats for machines without the real files. See docs/data.md.
"""
