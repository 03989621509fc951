"""tf.data parse functions built from a manifest (no hidden state).

``parse_fn(manifest, split, kind)`` maps a serialised record to a dict of
tensors: ``seed`` int64[], ``data`` dtype[input_shape], and where the kind
has them ``derivative``/``parameter`` int64[] and ``gradient``
dtype[input_shape + (n_params,)].  For local archives,
:func:`tf_dataset` chains them over a kind's files; URLs are read with
:mod:`writers.streams` instead (TensorFlow's gs:// client cannot use an
emulator and TF 2.21 has no s3://).
"""

from __future__ import annotations

from .manifest import Manifest, kind_record_spec


def _tf():
    import tensorflow as tf

    return tf


def parse_fn(manifest: Manifest, split: str, kind: str):
    """Parse function for one kind's records (shapes and dtype from the manifest)."""
    tf = _tf()
    spec = kind_record_spec(manifest, split, kind)
    dtype = tf.as_dtype(spec.dtype)
    features = {
        "data": tf.io.FixedLenFeature([], tf.string),
        "seed": tf.io.FixedLenFeature([], tf.int64),
    }
    if spec.finite_difference:
        features["derivative"] = tf.io.FixedLenFeature([], tf.int64)
        features["parameter"] = tf.io.FixedLenFeature([], tf.int64)
    if spec.gradient:
        features["gradient"] = tf.io.FixedLenFeature([], tf.string)
    data_shape = list(spec.input_shape)
    grad_shape = list(spec.gradient_shape)

    def parse(serialized):
        ex = tf.io.parse_single_example(serialized, features)
        out = dict(ex)
        out["data"] = tf.reshape(
            tf.io.decode_raw(ex["data"], dtype, little_endian=True), data_shape
        )
        if spec.gradient:
            out["gradient"] = tf.reshape(
                tf.io.decode_raw(ex["gradient"], dtype, little_endian=True), grad_shape
            )
        return out

    return parse


def tf_dataset(root: str, manifest: Manifest, split: str, kind: str):
    """tf.data.Dataset of one kind's parsed records in seed order (local files)."""
    from . import fs

    tf = _tf()
    files = [fs.join(root, f["path"]) for f in manifest.files(split, kind)]
    return tf.data.TFRecordDataset(files, buffer_size=1 << 20).map(parse_fn(manifest, split, kind))
