"""imnn_stream against the published reference `imnn` 0.3.2; see ``run.py``.

Kept empty: the reference's Python 3.9 child imports this package too.
"""
