"""``python -m benchmarks.versus_reference`` (from the repository root): see ``run.py``."""

from .run import main

main()
