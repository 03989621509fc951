"""beam_jobs: generate seed-matched simulation archives with Apache Beam.

Imports only ``writers`` (and receives simulators by reference, as
``module:function`` strings). Modules: ``simulators`` (the built-in toy and
GRF simulators, the ``toy`` and ``grf`` shortcuts), ``simulate`` (pure JAX:
keys, θ sets, padded vmapped batches, record encoding), ``job`` (job
parameters, ``job.json``, argument checks), ``pipeline`` (the Beam graph and
its DoFns), ``driver`` (``generate``: resume, progress, summary), ``cli`` (the
``generate`` subcommand).
"""

from .driver import GenerationResult, JobFailed, generate, run_generation
from .job import JobError
from .simulate import SimulationError

__all__ = [
    "generate",
    "run_generation",
    "GenerationResult",
    "JobError",
    "JobFailed",
    "SimulationError",
]
