"""``TFRecords``: the reference package's writer/parser names, without hidden state.

The seed's hand-built tf.data recipes call ``writer.parser`` and
``writer.derivative_parser(example, n_params=...)``.  Here both are
configured explicitly — from a manifest or from ``input_shape``/``n_params``/
``dtype`` — never from state left by an earlier write, so they run unchanged
on our files (and on reference-format files)::

    writer = writers.TFRecords.from_manifest(root)
    fid = tf.data.TFRecordDataset(sorted(glob(f"{root}/train/fiducial/*/*.tfrecords")))
    fid.map(writer.parser)                       # dtype[input_shape]

In gradient mode ``derivative_parser`` returns dsim/dθ,
dtype[input_shape + (n_params,)], read from ``gradient`` (our ``main``
records) or, when absent, from ``data`` (reference ``derivative`` files).
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from .schema import encode_example


class TFRecords:
    """Parsers (and a record serialiser) for simulations of one shape.

    input_shape: shape of one simulation; n_params: number of parameters
    (for ``derivative_parser``); dtype: "float32" (default) or "float64".
    """

    def __init__(self, input_shape, n_params: Optional[int] = None, dtype: str = "float32"):
        self.input_shape = tuple(int(x) for x in input_shape)
        self.n_params = n_params
        self.dtype = np.dtype(dtype).name

    @classmethod
    def from_manifest(cls, manifest_or_root) -> "TFRecords":
        """Configure from a :class:`~writers.manifest.Manifest` or an archive root."""
        from .manifest import Manifest, read_manifest

        m = (
            manifest_or_root
            if isinstance(manifest_or_root, Manifest)
            else read_manifest(manifest_or_root)
        )
        return cls(m.input_shape, m.n_params, m.dtype)

    def serialize(self, data, seed: int, derivative=None, parameter=None, gradient=None) -> bytes:
        """One record (see :func:`writers.schema.encode_example`); the data
        must already have this writer's shape and dtype (no silent casts)."""
        a = np.asarray(data)
        if a.shape != self.input_shape or a.dtype != self.dtype:
            raise ValueError(
                f"data: expected {self.dtype}{list(self.input_shape)}, got {a.dtype}{list(a.shape)}"
            )
        return encode_example(a, seed, derivative, parameter, gradient)

    def _decode(self, raw, shape):
        import tensorflow as tf

        return tf.reshape(tf.io.decode_raw(raw, tf.as_dtype(self.dtype), little_endian=True), shape)

    def parser(self, example):
        """Serialised record → simulation tensor dtype[input_shape]."""
        import tensorflow as tf

        parsed = tf.io.parse_single_example(example, {"data": tf.io.FixedLenFeature([], tf.string)})
        return self._decode(parsed["data"], self.input_shape)

    def derivative_parser(self, example, n_params: Optional[int] = None):
        """Serialised record → dsim/dθ tensor dtype[input_shape + (n_params,)]."""
        import tensorflow as tf

        n_params = n_params if n_params is not None else self.n_params
        if n_params is None:
            raise ValueError("derivative_parser needs n_params (argument or constructor)")
        parsed = tf.io.parse_single_example(
            example,
            {
                "data": tf.io.FixedLenFeature([], tf.string),
                "gradient": tf.io.FixedLenFeature([], tf.string, default_value=""),
            },
        )
        raw = tf.cond(
            tf.strings.length(parsed["gradient"]) > 0,
            lambda: parsed["gradient"],
            lambda: parsed["data"],
        )
        return self._decode(raw, self.input_shape + (int(n_params),))

    def seed_parser(self, example):
        """Serialised record → its seed index (int64 scalar tensor)."""
        import tensorflow as tf

        return tf.io.parse_single_example(example, {"seed": tf.io.FixedLenFeature([], tf.int64)})[
            "seed"
        ]
