"""The versus-reference benchmark's goal logic: a variant row ``X(validation=False)``
stands in for class X only in the ``*_same_work`` goals, and never counts as a class
of its own (``benchmarks/versus_reference/report.py``)."""

from benchmarks.versus_reference.common import CONFIGS, LIKE_FOR_LIKE, base_class
from benchmarks.versus_reference.report import goals


def _row(config, cls, speedup):
    return dict(
        config=config,
        cls=cls,
        speedup=speedup,
        memory_ratio=0.5,
        ours=dict(refit_s=0.01, s_per_it=0.01),
    )


def test_same_work_rows_replace_their_class_only_in_the_same_work_goals():
    rows = [
        _row("toy", "NumericalGradientIMNN", 1.9),
        _row("toy", "SimulatorIMNN", 0.99),
        _row("toy", "AggregatedNumericalGradientIMNN", 25.0),
        _row("toy", "AggregatedSimulatorIMNN", 15.0),
        _row("toy", "DatasetNumericalGradientIMNN", 30.0),
        # slower than 1×: would fail in_memory_no_slower if it were counted as in memory
        _row("toy", "AggregatedSimulatorIMNN(validation=False)", 22.0),
        _row("toy", "SimulatorIMNN(validation=False)", 1.1),
        _row("large", "AggregatedGradientIMNN", 49.0),
        _row("large", "AggregatedSimulatorIMNN(validation=False)", 60.0),
    ]
    g = goals(rows)
    assert g["in_memory_no_slower"] is False  # SimulatorIMNN at 0.99×
    assert g["in_memory_no_slower_same_work"] is True
    assert g["two_pass_20x"] is False  # AggregatedSimulatorIMNN at 15×
    assert g["two_pass_20x_same_work"] is True
    assert g["large_network_50x"] is False and g["large_network_50x_same_work"] is False
    rows[0]["speedup"] = 0.5  # a class without a variant is judged as it is, both ways
    assert goals(rows)["in_memory_no_slower_same_work"] is False


def test_variants_name_real_classes_and_every_config_has_its_rows():
    for cls in LIKE_FOR_LIKE:
        name, kw = base_class(cls)
        assert kw == {"validation": False} and "Simulator" in name
    for config, (_, _, classes, _) in CONFIGS.items():
        for cls in classes:
            if cls in LIKE_FOR_LIKE:
                assert base_class(cls)[0] in classes, (config, cls)
