"""imnn_stream: Information Maximising Neural Networks, in memory, aggregated
over devices, and streamed from simulation archives."""
from .classes import (AggregatedGradientIMNN, AggregatedNumericalGradientIMNN,
                      AggregatedSimulatorIMNN, GradientIMNN, NumericalGradientIMNN, SimulatorIMNN)
from .dataset import DatasetGradientIMNN, DatasetNumericalGradientIMNN
from .factory import IMNN
from .trainer import NonFiniteError
from .twopass import OrderError
from . import fisher, models, utils

__all__ = ["IMNN", "SimulatorIMNN", "GradientIMNN", "NumericalGradientIMNN", "AggregatedSimulatorIMNN",
           "AggregatedGradientIMNN", "AggregatedNumericalGradientIMNN", "DatasetGradientIMNN",
           "DatasetNumericalGradientIMNN", "NonFiniteError",
           "OrderError", "fisher", "models", "utils"]
__version__ = "0.1.0"
