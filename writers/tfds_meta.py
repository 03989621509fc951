"""tensorflow-datasets metadata: ``tfds.builder_from_directory(ARCHIVE/<split>/<kind>)``.

Every kind directory of an archive (``train/fiducial``, ``train/derivative``,
``train/main``, ...) gets TFDS's ``dataset_info.json`` and ``features.json``
(:func:`writers.layout.tfds_files`).  The builder there has one TFDS split per
device, ``device-0``, ``device-1``, ..., whose examples decode to every
feature the kind carries: ``data`` (``input_shape``, the manifest dtype),
``seed`` (int64) and, where present, ``derivative``/``parameter`` (int64,
finite differences) or ``gradient`` (``input_shape + (n_params,)``).

TFDS locates shard ``k`` of a split with a file-path template stored per
split (``filepathTemplate``); our names are expressed exactly, without
renaming anything::

    device-00001-of-00002/shard-{SHARD_X_OF_Y}.tfrecords

(TFDS writes ``{SHARD_X_OF_Y}`` as ``%05d-of-%05d``, our ``layout.shard_path``
too).  The metadata sets ``disableShuffling``, so TFDS's default read keeps
the files in order and does not interleave them: ``as_dataset(split=
"device-0")`` yields the device's records in seed order, and ``split="all"``
the whole kind in seed order.

Adopted reference archives (``imnn-0.3``) keep their files at the archive root
(``fiducial_<n>.tfrecords``, unpadded counters no template can express): a
kind whose device has one file gets ``device-0`` pointing at it
(``../../fiducial_0.tfrecords``); otherwise each file is a TFDS split
``device-0-file-<j>`` in seed order (``split="all"`` reads them in order).
Paths with ``..`` resolve on local file systems only.

The JSON is written directly (the files are TFDS's ``DatasetInfo`` and
``FeaturesDict`` protos in JSON form), so writing an archive never imports
TensorFlow; the tests load the result with TFDS itself.
"""

from __future__ import annotations

import json

from . import durable, fs
from .layout import TFDS_FILES, tfds_files
from .manifest import Manifest, kind_record_spec

__all__ = ["write_tfds_metadata", "kind_metadata", "TFDS_FILES", "DATASET_NAME"]

#: the TFDS dataset name of every kind directory
DATASET_NAME = "imnn_archive"
_TENSOR = "tensorflow_datasets.core.features.tensor_feature.Tensor"
_DICT = "tensorflow_datasets.core.features.features_dict.FeaturesDict"


def _tensor(shape, dtype: str, encoding: str) -> dict:
    dims = {"dimensions": [str(int(x)) for x in shape]} if len(shape) else {}
    return {
        "pythonClassName": _TENSOR,
        "tensor": {"dtype": dtype, "encoding": encoding, "shape": dims},
    }


def features(manifest: Manifest, split: str, kind: str) -> dict:
    """The kind's ``features.json`` (a TFDS FeaturesDict of Tensors)."""
    spec = kind_record_spec(manifest, split, kind)
    feats = {
        "data": _tensor(spec.input_shape, manifest.dtype, "bytes"),
        "seed": _tensor((), "int64", "none"),
    }
    if spec.finite_difference:
        feats["derivative"] = _tensor((), "int64", "none")
        feats["parameter"] = _tensor((), "int64", "none")
    if spec.gradient:
        shape = tuple(manifest.input_shape) + (manifest.n_params,)
        feats["gradient"] = _tensor(shape, manifest.dtype, "bytes")
    return {"featuresDict": {"features": feats}, "pythonClassName": _DICT}


def _tfds_shard(i: int, n: int) -> str:
    """TFDS's ``{SHARD_X_OF_Y}`` (naming.ShardedFileTemplate.relative_filepath)."""
    w = max(len(str(n)), 5)
    return f"{i:0{w}d}-of-{n:0{w}d}"


def _relative(path: str, split: str, kind: str) -> str:
    """``path`` (relative to the archive root) relative to ``split/kind``."""
    prefix = f"{split}/{kind}/"
    return path[len(prefix) :] if path.startswith(prefix) else "../../" + path


def _split(name: str, files: list, template: str) -> dict:
    return {
        "filepathTemplate": template,
        "name": name,
        "numBytes": str(sum(int(f["bytes"]) for f in files)),
        "shardLengths": [str(int(f["count"])) for f in files],
    }


def device_splits(manifest: Manifest, split: str, kind: str) -> list[dict]:
    """The TFDS ``SplitInfo`` entries of a kind: one per device (or per file
    where a device's files follow no template, see the module docstring)."""
    out = []
    for dev in manifest.layout[split][kind]["devices"]:
        files, name = dev["files"], f"device-{dev['device']}"
        rel = [_relative(f["path"], split, kind) for f in files]
        folders = {r.rpartition("/")[0] for r in rel}
        if len(folders) == 1 and not rel[0].startswith("../"):
            folder = folders.pop()
            template = f"{folder}/shard-{{SHARD_X_OF_Y}}.tfrecords"
            n = len(files)
            if rel == [f"{folder}/shard-{_tfds_shard(i, n)}.tfrecords" for i in range(n)]:
                out.append(_split(name, files, template))
                continue
        if len(files) == 1:
            out.append(_split(name, files, rel[0]))
            continue
        for j, (f, r) in enumerate(zip(files, rel)):
            out.append(_split(f"{name}-file-{j}", [f], r))
    return out


def kind_metadata(manifest: Manifest, split: str, kind: str) -> dict:
    """``{file name: JSON object}`` of the TFDS metadata of one kind."""
    info = {
        "description": (
            f"imnn_stream archive: split {split!r}, kind {kind!r}, mode "
            f"{manifest.mode!r}; one TFDS split per device, records in seed order"
        ),
        "disableShuffling": True,
        "fileFormat": "tfrecord",
        "moduleName": "writers.tfds_meta",
        "name": DATASET_NAME,
        "splits": device_splits(manifest, split, kind),
        "version": "1.0.0",
    }
    return {"dataset_info.json": info, "features.json": features(manifest, split, kind)}


def write_tfds_metadata(root: str, manifest: Manifest) -> list[str]:
    """Write ``dataset_info.json``/``features.json`` in every kind directory
    (``ARCHIVE/<split>/<kind>``) of a complete manifest (every file listed);
    returns the directories written.  Called before the manifest is
    committed by ``generate``, ``adopt`` and ``write_arrays``; call it on an
    older archive to add the metadata."""
    out = []
    for split in manifest.layout:
        for kind in manifest.layout[split]:
            docs = kind_metadata(manifest, split, kind)
            for rel in tfds_files(split, kind):
                name = rel.rpartition("/")[2]
                data = json.dumps(docs[name], indent=2, sort_keys=True).encode()
                durable.write_atomic(fs.join(root, rel), data)
            out.append(fs.join(root, split, kind))
    return out
