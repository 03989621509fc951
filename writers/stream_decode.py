"""Decoding stream records into batch arrays: vectorised for runs of
equal-length records, one record at a time for anything else.

A :class:`Source` is one kind's records for one device and knows how their
features map to batch keys.  :meth:`Source.decode` decodes a run of payloads
of one byte layout with a few NumPy slices (:class:`_Template`,
:func:`_varints`); :meth:`Source.fill_one` decodes a single record with the
per-record parser and names the file and record in any error.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from .errors import ArchiveError
from .framing import true_prefix
from .schema import RecordSpec, _parse_flat, parse_flat


def record_fields(spec: RecordSpec) -> list:
    """``(feature name, batch key, "int"/"bytes", shape)`` of a kind's records."""
    shape = tuple(spec.input_shape)
    f = [("seed", "seed", "int", ()), ("data", "data", "bytes", shape)]
    if spec.finite_difference:
        f += [("derivative", "derivative", "int", ()), ("parameter", "parameter", "int", ())]
    if spec.gradient:
        f.append(("gradient", "gradient", "bytes", spec.gradient_shape))
    return f


def _parse(raw, path, r) -> dict:
    try:
        return parse_flat(raw)
    except ValueError as e:
        raise ArchiveError(f"malformed tf.train.Example: {e}", path, r) from None


def _bytes_into(out: np.ndarray, i: int, feats: dict, name: str, path, r) -> None:
    value = feats.get(name)
    flat = out.reshape(out.shape[0], -1).view(np.uint8)  # a view: rows of raw bytes
    if not isinstance(value, bytes) or len(value) != flat.shape[1]:
        got = len(value) if isinstance(value, bytes) else type(value).__name__
        raise ArchiveError(
            f"feature {name!r}: expected {flat.shape[1]} bytes "
            f"({out.dtype.name}{list(out.shape[1:])}), got {got}",
            path,
            r,
        )
    flat[i] = np.frombuffer(value, np.uint8)


def _int_into(out: np.ndarray, i: int, feats: dict, name: str, path, r) -> None:
    value = feats.get(name)
    if not isinstance(value, int):
        raise ArchiveError(f"feature {name!r}: expected one int64, got {value!r:.40}", path, r)
    out[i] = value


class _Template:
    """Byte layout shared by a run of equal-length records: where each
    field's value sits, and the bytes every record must share elsewhere.
    Lets a run be decoded with a few NumPy slices instead of a parse per
    record; any record that differs falls back to the per-record parser."""

    def __init__(self, raw: bytes, fields):
        offsets = {}
        values = _parse_flat(raw, offsets)
        self.length = len(raw)
        self.slices = {}
        mask = np.ones(len(raw), bool)
        for name, _, typ, _ in fields:
            if name not in offsets:
                raise ValueError(name)
            if isinstance(values[name], int) != (typ == "int"):  # e.g. seed as bytes
                raise ValueError(f"feature {name!r} is not of kind {typ}")
            start, end = offsets[name]
            self.slices[name] = (start, end)
            mask[start:end] = False
        self.fixed = np.flatnonzero(mask)
        self.expected = np.frombuffer(raw, np.uint8)[self.fixed]

    def matches(self, arr: np.ndarray) -> np.ndarray:
        """Per row of ``arr`` (n, length): does it share the fixed bytes?"""
        return (arr[:, self.fixed] == self.expected).all(axis=1)


def _varints(cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Decode fixed-width varint columns (n, w) → (int64(n), valid bool(n))."""
    w = cols.shape[1]
    valid = cols[:, -1] < 0x80
    if w == 1:
        return cols[:, 0].astype(np.int64), valid
    if w > 1:
        valid &= (cols[:, :-1] >= 0x80).all(axis=1)
    value = np.zeros(cols.shape[0], np.uint64)
    for j in range(w):
        value |= (cols[:, j] & 0x7F).astype(np.uint64) << np.uint64(7 * j)
    return value.view(np.int64), valid


class Source:
    """One kind's records for one device, with how its features map to the
    batch: ``segs`` the :class:`writers.stream_plan.Segment` pieces to read
    under ``root``, ``info`` the kind's :class:`writers.layout.KindInfo`,
    ``fields`` a list of (feature name, batch key, "bytes"/"int", shape)."""

    def __init__(self, root, segs, info, fields, check_crc):
        self.root, self.segs, self.info = root, segs, info
        self.fields, self.check_crc = fields, check_crc
        self.template = None

    def fill_one(self, batch: dict, i: int, path: str, r: int, seed: int, raw: bytes) -> None:
        """Decode record ``r`` of ``path`` (expected seed ``seed``) into row
        ``i`` of the batch arrays with the per-record parser."""
        feats = _parse(raw, path, r)
        if feats.get("seed") != seed:
            raise ArchiveError(
                f"expected seed {seed}, got {feats.get('seed')} (records out of order or missing)",
                path,
                r,
            )
        for name, key, typ, _ in self.fields:
            (_int_into if typ == "int" else _bytes_into)(batch[key], i, feats, name, path, r)

    def _template_for(self, row: np.ndarray, rebuild: bool) -> Optional[_Template]:
        t = self.template
        if rebuild or t is None or t.length != row.shape[0]:
            try:
                t = _Template(row.tobytes(), self.fields)
            except (ValueError, IndexError, UnicodeDecodeError):
                t = None
            self.template = t
        return t

    def decode(self, batch: dict, i0: int, arr: np.ndarray, seeds: np.ndarray) -> int:
        """Decode payload rows ``arr`` (n, L) uint8 with expected seeds
        ``seeds`` into batch rows ``i0..`` with a few NumPy operations.

        Returns how many leading rows were decoded (they all share one byte
        layout, valid varints, the right value sizes and the expected
        seeds); the caller decodes the next row with :meth:`fill_one`,
        which names the record in any error."""
        t = self._template_for(arr[0], False)
        if t is None:
            return 0
        ok = t.matches(arr)
        if not ok[0]:  # a new layout of the same length: template from row 0
            t = self._template_for(arr[0], True)
            if t is None:
                return 0
            ok = t.matches(arr)
        m = true_prefix(ok)
        values = {}
        for name, key, typ, _ in self.fields:
            a, b = t.slices[name]
            if typ == "int":
                v, valid = _varints(arr[:m, a:b])
                m = min(m, true_prefix(valid))
                values[key] = v
            else:
                if b - a != batch[key][0].nbytes:
                    return 0  # wrong size: the per-record path reports it
                values[key] = arr[:, a:b]
        if "seed" not in values:
            return 0
        m = min(m, true_prefix(values["seed"][:m] == seeds[:m]))
        if m == 0:
            return 0
        for key, v in values.items():
            out = batch[key][i0 : i0 + m]
            if v.ndim == 1:
                out[:] = v[:m]
            else:
                out.reshape(m, -1).view(np.uint8)[:] = v[:m]
        return m
