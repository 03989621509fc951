"""imnn_stream: Information Maximising Neural Networks, in memory, aggregated
over devices, and streamed from simulation archives.

Names are imported lazily, so that the command line can set XLA's host device
count before jax starts.
"""
import importlib

_NAMES = {
    "IMNN": "factory",
    "SimulatorIMNN": "classes", "GradientIMNN": "classes", "NumericalGradientIMNN": "classes",
    "AggregatedSimulatorIMNN": "classes", "AggregatedGradientIMNN": "classes",
    "AggregatedNumericalGradientIMNN": "classes",
    "DatasetGradientIMNN": "dataset", "DatasetNumericalGradientIMNN": "dataset",
    "NonFiniteError": "trainer", "OrderError": "twopass",
}
_MODULES = ("fisher", "models", "utils", "optimisers", "simulators", "modes", "strategies",
            "runs")

__all__ = list(_NAMES) + list(_MODULES)
__version__ = "0.1.0"


def __getattr__(name):
    if name in _NAMES:
        value = getattr(importlib.import_module(f".{_NAMES[name]}", __name__), name)
    elif name in _MODULES:
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module 'imnn_stream' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return sorted(__all__)
