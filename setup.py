"""A shim for tools that want a ``setup.py`` (Beam's ``--setup_file`` on Dataflow
builds the workers' sdist with ``python setup.py sdist`` when the ``build``
package is absent). Everything is declared in pyproject.toml."""

from setuptools import setup

setup()
