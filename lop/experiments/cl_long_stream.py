"""Experiment `cl_long_stream`: a long permuted-digits task sequence for the forgetting-and-plasticity table
(docs/protocols/cl_permuted_mnist.md, "Long stream").

The protocol of `cl_permuted_mnist` (accuracy matrix, summaries, plasticity probes after every task) on
100 permuted tasks, by default of the embedded 8×8 digits with a 2 × 100 network and 3 epochs per task:
long enough to see whether a method that protects old tasks (SI, EWC, replay) keeps learning new ones.
"""

from __future__ import annotations

from lop.experiments.base import ExperimentSpec
from lop.experiments.cl_permuted_mnist import EXPERIMENT as PERMUTED
from lop.experiments.cl_permuted_mnist import CLPermutedMNISTTrainer
from lop.experiments.schemas import CLLongStreamProblem

EXPERIMENT = ExperimentSpec(
    name="cl_long_stream",
    problem_cls=CLLongStreamProblem,
    build=CLPermutedMNISTTrainer,
    description="100 permuted-digits tasks: forgetting and plasticity side by side over a long stream",
    needs_data=("mnist",),
    supports=PERMUTED.supports,
)
