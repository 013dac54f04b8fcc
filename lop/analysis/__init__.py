"""Aggregation of finished runs and the paper's figures (no Snakemake or DVC knowledge).

`lop.analysis.aggregate` turns run folders into one tidy table per experiment + scale,
`lop.analysis.registry` reads ``params/figures.yaml``, `lop.analysis.stats` computes the bands over
seeds and `lop.analysis.figures` draws byte-reproducible PNG/PDF figures.
"""
