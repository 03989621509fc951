"""writers: the imnn_stream archive format.

Modules: ``schema`` (record encoding), ``layout`` (seed → device → file
arithmetic), ``shard`` (atomic shard writer), ``manifest`` (manifest.json),
``fs`` (local paths and URLs), ``tfrecord`` (TFRecord framing),
``streams`` (per-device readers), ``parsers`` (tf.data parse functions),
``validator`` (archive checks), ``archive`` (write from in-memory arrays),
``legacy`` (adopt reference-package archives), ``tfrecords`` (the
reference-compatible ``TFRecords`` class), ``index`` (Parquet index).
"""
from .errors import ArchiveError, LayoutError, MissingFileError, WriteError


def validate(root, **kwargs):
    """Check an archive; see :func:`writers.validator.validate`."""
    from .validator import validate as _validate
    return _validate(root, **kwargs)


def __getattr__(name):
    if name == "TFRecords":
        from .tfrecords import TFRecords
        return TFRecords
    raise AttributeError(name)
