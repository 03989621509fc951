"""imnn_stream.app: the applications built on the library.

cli        the ``imnn-stream`` command line (also ``python -m imnn_stream``)
fitting    FitConfig, the one fit configuration, and fit_archive
demo       the toy problem end to end
inference  the seed's inference loop, Gaussian posterior, rejection ABC, export
runs       run folders: save_run, FittedIMNN, load_inputs

The only part of ``imnn_stream`` that imports ``beam_jobs``. Nothing is
imported here, so that the command line can set XLA's host device count before
jax starts; import the modules themselves.
"""
