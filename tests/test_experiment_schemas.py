"""`lop.experiments.schemas` (torch-free, used by params validation) agrees with the experiments."""

from __future__ import annotations

from lop.experiments.base import experiments
from lop.experiments.schemas import SCHEMAS, get_schema


def test_every_experiment_has_its_schema():
    """Same experiment names; each schema's problem class is the one the experiment trains with, and its
    supported keys are the ones the method layer derives from the experiment's learner (plus its own)."""
    specs = experiments()
    assert sorted(SCHEMAS) == sorted(specs)
    for name, spec in specs.items():
        schema = get_schema(name)
        assert schema.problem_cls is spec.problem_cls, name
        assert schema.supports == spec.supports, (
            f"{name}: update SCHEMAS in lop/experiments/schemas.py: supports "
            f"{sorted(spec.supports)} (missing {sorted(spec.supports - schema.supports)}, "
            f"extra {sorted(schema.supports - spec.supports)})"
        )


def test_mtil_order_is_the_data_layers():
    """The problem defaults use the data layer's MTIL Order I (one torch-free constant)."""
    from lop.data.mtil import ORDER_I
    from lop.experiments.schemas import MTIL_ORDER_I, MoEMtilProblem

    assert MTIL_ORDER_I is ORDER_I and MoEMtilProblem().datasets == ORDER_I and len(ORDER_I) == 11
