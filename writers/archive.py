"""Write a whole archive from in-memory NumPy arrays (no Beam needed)."""

from __future__ import annotations

from typing import Optional

import numpy as np

from . import fs
from .errors import ArchiveError
from .input_stats import FIDUCIAL_KINDS, StatsRecords
from .layout import kind_features, plan_shards, record_keys
from .manifest import MANIFEST_NAME, Manifest, new_manifest, write_manifest
from .schema import encode_example
from .shard import write_shard
from .tfds_meta import write_tfds_metadata


def _float_array(x, name: str, dtype) -> np.ndarray:
    a = np.asarray(x)
    if dtype is not None:
        a = a.astype(dtype, copy=False)
    if a.dtype.kind != "f":
        raise ArchiveError(f"{name}: expected a floating-point array, got dtype {a.dtype}")
    return a


def write_arrays(
    root: str,
    mode: str,
    theta_fid,
    delta_theta=None,
    *,
    fiducial=None,
    derivative=None,
    gradient=None,
    validation_fiducial=None,
    validation_derivative=None,
    validation_gradient=None,
    n_devices: int = 1,
    records_per_shard: int = 1000,
    max_bytes: Optional[int] = None,
    dtype=None,
    simulator: Optional[str] = None,
    simulator_config: Optional[dict] = None,
    base_seeds: Optional[dict] = None,
    overwrite: bool = False,
) -> Manifest:
    """Write an archive at ``root`` from arrays; returns its manifest.

    Shapes (``s`` = input_shape, ``p`` = n_params):

    * numerical: ``fiducial`` (n_s, *s); ``derivative`` (n_d, 2, p, *s), axis 1
      the sign (0 at θ_fid − δθ/2, 1 at θ_fid + δθ/2), axis 2 the parameter;
    * gradient: ``fiducial`` (n_s, *s); ``gradient`` (n_d, *s, p) = dsim/dθ of
      the first n_d fiducial simulations;
    * fiducial: ``fiducial`` (n_s, *s).

    ``validation_*`` likewise for the validation split (same n_s, n_d).
    The dtype of ``fiducial`` is kept (float32, float64, ...) unless
    ``dtype`` asks for another.  Refuses to write over an existing archive
    unless ``overwrite``.  The manifest records the statistics of the
    fiducial training inputs (``input_statistics``, :mod:`writers.input_stats`).
    """
    if fiducial is None:
        raise ArchiveError("write_arrays needs `fiducial`")
    fid = _float_array(fiducial, "fiducial", dtype)
    dtype = fid.dtype
    n_s, input_shape = fid.shape[0], fid.shape[1:]
    n_params = len(theta_fid)
    splits = {"train": (fid, derivative, gradient)}
    if validation_fiducial is not None:
        splits["validation"] = (
            _float_array(validation_fiducial, "validation_fiducial", dtype),
            validation_derivative,
            validation_gradient,
        )
    if mode == "numerical":
        if derivative is None:
            raise ArchiveError("numerical mode needs `derivative` (n_d, 2, n_params, *s)")
        n_d = np.shape(derivative)[0]
    elif mode == "gradient":
        if gradient is None:
            raise ArchiveError("gradient mode needs `gradient` (n_d, *s, n_params)")
        n_d = np.shape(gradient)[0]
    else:
        n_d = 0
    arrays = {}
    for split, (f, der, grad) in splits.items():
        if f.shape != (n_s,) + input_shape:
            raise ArchiveError(
                f"{split} fiducial: expected shape {(n_s,) + input_shape}, got {f.shape}"
            )
        if mode == "numerical":
            der = _float_array(der, f"{split} derivative", dtype)
            want = (n_d, 2, n_params) + input_shape
            if der.shape != want:
                raise ArchiveError(f"{split} derivative: expected shape {want}, got {der.shape}")
            if der.dtype != dtype:
                raise ArchiveError(
                    f"{split} derivative: dtype {der.dtype} differs from fiducial dtype {dtype}"
                )
        if mode == "gradient":
            grad = _float_array(grad, f"{split} gradient", dtype)
            want = (n_d,) + input_shape + (n_params,)
            if grad.shape != want:
                raise ArchiveError(f"{split} gradient: expected shape {want}, got {grad.shape}")
            if grad.dtype != dtype:
                raise ArchiveError(
                    f"{split} gradient: dtype {grad.dtype} differs from fiducial dtype {dtype}"
                )
        arrays[split] = (f, der, grad)
    if fs.exists(fs.join(root, MANIFEST_NAME)) and not overwrite:
        raise ArchiveError(
            "an archive already exists here (pass overwrite=True)", fs.join(root, MANIFEST_NAME)
        )
    manifest = new_manifest(
        mode,
        theta_fid,
        delta_theta,
        n_s,
        n_d,
        input_shape,
        dtype=dtype.name,
        simulator=simulator,
        simulator_config=simulator_config,
        base_seeds=base_seeds,
        splits=tuple(arrays),
        n_devices=n_devices,
        records_per_shard=records_per_shard,
        max_bytes=max_bytes,
    )
    record_bytes = None
    if max_bytes is not None:
        record_bytes = fid[0].nbytes * (1 + (n_params if mode == "gradient" else 0)) + 64
    for spec in plan_shards(
        mode,
        n_s,
        n_d,
        n_params,
        n_devices,
        records_per_shard,
        splits=tuple(arrays),
        max_bytes=max_bytes,
        record_bytes=record_bytes,
    ):
        f, der, grad = arrays[spec.split]
        records = _records(mode, spec, f, der, grad, n_params)
        if spec.kind in FIDUCIAL_KINDS:  # write_shard gathers their statistics (train only)
            records = StatsRecords(_with_inputs(f, spec, records), input_shape)
        manifest.add_file(spec, write_shard(root, spec, records))
    write_tfds_metadata(root, manifest)  # tfds.builder_from_directory(root/split/kind)
    write_manifest(root, manifest)
    return manifest


def _with_inputs(fid, spec, records, block: int = 256):
    """(inputs, ()) pairs of the shard's fiducial seeds in blocks, then its records."""
    for a in range(spec.first_seed, spec.last_seed + 1, block):
        yield fid[a : min(a + block, spec.last_seed + 1)], ()
    yield None, records


def _records(mode, spec, fid, der, grad, n_params):
    """The shard's records in archive order (:func:`writers.layout.record_keys`)."""
    finite_difference, gradient = kind_features(mode, spec.kind)
    for seed, sign, p in record_keys(spec.first_seed, spec.last_seed, n_params, finite_difference):
        if finite_difference:
            yield encode_example(der[seed, sign, p], seed, sign, p)
        elif gradient:
            yield encode_example(fid[seed], seed, gradient=grad[seed])
        else:
            yield encode_example(fid[seed], seed)
