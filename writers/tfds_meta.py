"""tensorflow-datasets metadata so ``tfds.builder_from_directory(ARCHIVE/split)`` loads a split.

Each kind becomes a TFDS split (``fiducial``, ``derivative``, ``main``,
``remaining``) whose records decode to ``data`` (Tensor, raw bytes),
``seed`` and, where present, ``derivative``/``parameter``/``gradient``.

Only archives laid out for ONE device can be described: TFDS locates shard
``k`` of a split with a single template (``{SPLIT}``, ``{SHARD_X_OF_Y}``),
while our per-device directories (``device-{d}-of-{D}``) and per-device shard
numbering cannot be expressed in it without changing the layout.  For
``n_devices > 1`` :func:`write_tfds_metadata` raises a LayoutError.
"""

from __future__ import annotations

import numpy as np

from . import fs
from .errors import LayoutError
from .layout import MANIFEST_NAME, TFDS_FILES
from .manifest import Manifest

__all__ = ["write_tfds_metadata", "TFDS_FILES"]
_TEMPLATE = "{SPLIT}/device-00000-of-00001/shard-{SHARD_X_OF_Y}.tfrecords"


def write_tfds_metadata(root: str, manifest: Manifest) -> list[str]:
    """Write ``dataset_info.json``/``features.json`` in every split directory;
    returns the directories written."""
    import tensorflow_datasets as tfds

    if manifest.n_devices != 1 or manifest.record_format != "imnn-stream":
        raise LayoutError(
            "TFDS metadata needs an archive written for 1 device (TFDS "
            "cannot express per-device shard directories)",
            MANIFEST_NAME,
        )
    T = tfds.features.Tensor
    dtype = np.dtype(manifest.dtype)
    shape = tuple(manifest.input_shape)
    out = []
    for split in manifest.layout:
        split_dir = fs.join(root, split)
        infos, specs = [], {}
        for kind in manifest.kinds(split):
            spec = manifest.record_spec(split, kind)
            files = manifest.files(split, kind)
            infos.append(
                tfds.core.SplitInfo(
                    name=kind,
                    shard_lengths=[f["count"] for f in files],
                    num_bytes=sum(f["bytes"] for f in files),
                    filename_template=tfds.core.ShardedFileTemplate(
                        data_dir=split_dir,
                        template=_TEMPLATE,
                        dataset_name="imnn_archive",
                        split=kind,
                        filetype_suffix="tfrecord",
                    ),
                )
            )
            specs["data"] = T(shape=shape, dtype=dtype, encoding=tfds.features.Encoding.BYTES)
            specs["seed"] = T(shape=(), dtype=np.int64)
            if spec.finite_difference:
                specs["derivative"] = T(shape=(), dtype=np.int64)
                specs["parameter"] = T(shape=(), dtype=np.int64)
        if (
            len({manifest.record_spec(split, k).gradient for k in manifest.kinds(split)}) > 1
            or any(manifest.record_spec(split, k).finite_difference for k in manifest.kinds(split))
            and len(manifest.kinds(split)) > 1
        ):
            # One FeaturesDict serves every TFDS split: kinds with different
            # features get the common ones (data, seed) only.
            specs = {k: specs[k] for k in ("data", "seed")}
        ident = tfds.core.dataset_info.DatasetIdentity(
            name="imnn_archive",
            version=tfds.core.Version("1.0.0"),
            data_dir=split_dir,
            module_name="writers.tfds_meta",
        )
        info = tfds.core.DatasetInfo(
            builder=ident,
            features=tfds.features.FeaturesDict(specs),
            split_dict=tfds.core.SplitDict(infos),
            description=f"imnn_stream archive, split {split!r}, mode {manifest.mode!r}",
        )
        info.set_file_format("tfrecord")
        info.write_to_directory(split_dir)
        out.append(split_dir)
    return out
