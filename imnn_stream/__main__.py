"""``python -m imnn_stream ...``: the ``imnn-stream`` command line."""

import sys

from .app.cli import main

sys.exit(main())
