"""writers: the imnn_stream archive format.  Imports nothing of ours.

Modules: ``layout`` (the archive contract: file names, record order, records
per seed, seed → device → file arithmetic), ``schema`` (record encoding),
``framing`` (TFRecord framing and CRCs), ``fs`` (local paths and URLs),
``shard`` (atomic shard writer), ``check`` (the one shard-file check),
``manifest`` (manifest.json; field and version checks in ``manifest_schema``),
``durable`` (fsynced atomic writes, lock files), ``index`` (Parquet index), ``validator``
(archive checks), ``archive`` (write from in-memory arrays), ``legacy``
(adopt reference-package archives), ``streams`` (per-device readers, built
from ``stream_plan``, ``stream_decode``, ``stream_read`` and
``stream_prefetch``), ``parsers`` (tf.data parse functions), ``tfds_meta``
(tensorflow-datasets metadata), ``reference_tfrecords`` (the
reference-compatible ``TFRecords`` class), ``cli`` (``imnn-stream validate``
and ``adopt``).
"""

from .errors import ArchiveError, LayoutError, MissingFileError, WriteError

__all__ = ["ArchiveError", "LayoutError", "MissingFileError", "WriteError", "validate", "TFRecords"]


def validate(root, **kwargs):
    """Check an archive; see :func:`writers.validator.validate`."""
    from .validator import validate as _validate

    return _validate(root, **kwargs)


def __getattr__(name):
    if name == "TFRecords":
        from .reference_tfrecords import TFRecords

        return TFRecords
    raise AttributeError(name)
