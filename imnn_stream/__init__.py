"""imnn_stream: Information Maximising Neural Networks, in memory, aggregated
over devices, and streamed from simulation archives.

Names are imported lazily, so that the command line can set XLA's host device
count before jax starts. The library (this package) never imports its
applications (:mod:`imnn_stream.app`: command line, demo, inference loop, run
folders); ``imnn_stream.app`` and ``imnn_stream.runs`` are reachable from here
only as lazy attributes, for convenience.
"""

import importlib

_NAMES = {
    "IMNN": "factory",
    "SimulatorIMNN": "classes",
    "GradientIMNN": "classes",
    "NumericalGradientIMNN": "classes",
    "AggregatedSimulatorIMNN": "classes",
    "AggregatedGradientIMNN": "classes",
    "AggregatedNumericalGradientIMNN": "classes",
    "DatasetGradientIMNN": "streaming",
    "DatasetNumericalGradientIMNN": "streaming",
    "NonFiniteError": "trainer",
    "OrderError": "twopass",
}
_MODULES = {
    name: name
    for name in (
        "fisher",
        "models",
        "utils",
        "optimisers",
        "modes",
        "strategies",
        "app",
        "normalise",
        "information",
    )
}
_MODULES["runs"] = "app.runs"

__all__ = list(_NAMES) + list(_MODULES)
__version__ = "0.2.0"


def __getattr__(name):
    if name in _NAMES:
        value = getattr(importlib.import_module(f".{_NAMES[name]}", __name__), name)
    elif name in _MODULES:
        value = importlib.import_module(f".{_MODULES[name]}", __name__)
    else:
        raise AttributeError(f"module 'imnn_stream' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return sorted(__all__)
