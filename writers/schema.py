"""Record schema: tf.train.Example protos, encoded and decoded without TensorFlow.

Feature names follow the reference ``imnn`` package:

=============  =======  ====================================================
``data``       bytes    the simulation, raw little-endian bytes, shape
                        ``input_shape``, manifest dtype (float32 default)
``seed``       int64    seed index within its split
``derivative`` int64    finite differences only: 0 below (θ−δθ/2), 1 above
``parameter``  int64    finite differences only: parameter index α
``gradient``   bytes    gradient-mode ``main`` only: dsim/dθ, raw
                        little-endian, shape ``input_shape + (n_params,)``
=============  =======  ====================================================

The protobuf wire format is written by hand (it is tiny) so that Beam
workers and readers never import TensorFlow; the bytes are identical in
meaning to ``tf.train.Example(...).SerializeToString()`` and are parsed by
``tf.io.parse_single_example``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Optional

import numpy as np

from .errors import ArchiveError

FEATURES = ("data", "seed", "derivative", "parameter", "gradient")
SUPPORTED_DTYPES = ("float16", "float32", "float64")


@dataclass(frozen=True)
class RecordSpec:
    """What a record of one kind holds (shapes from the manifest, nothing hidden).

    input_shape: shape of one simulation; dtype: numpy dtype name;
    finite_difference: records carry ``derivative`` and ``parameter``;
    gradient: records carry ``gradient`` of shape ``input_shape + (n_params,)``.
    """

    input_shape: tuple
    dtype: str = "float32"
    n_params: int = 0
    finite_difference: bool = False
    gradient: bool = False

    @property
    def np_dtype(self) -> np.dtype:
        return np.dtype(self.dtype).newbyteorder("<")

    @property
    def gradient_shape(self) -> tuple:
        return tuple(self.input_shape) + (self.n_params,)

    @property
    def data_bytes(self) -> int:
        return int(np.prod(self.input_shape, dtype=np.int64)) * self.np_dtype.itemsize

    @property
    def gradient_bytes(self) -> int:
        return self.data_bytes * self.n_params


# --------------------------------------------------------------------------- encode


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int64 are ten-byte two's complement varints
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _len_delimited(field: int, payload: bytes) -> bytes:
    return _varint((field << 3) | 2) + _varint(len(payload)) + payload


def _feature_bytes(value: bytes) -> bytes:
    # Feature{bytes_list(1): BytesList{value(1): value}}
    return _len_delimited(1, _len_delimited(1, value))


def _feature_int64(value: int) -> bytes:
    # Feature{int64_list(3): Int64List{value(1), packed}}
    return _len_delimited(3, _len_delimited(1, _varint(int(value))))


def _raw_le(array, name: str) -> bytes:
    a = np.asarray(array)
    if a.dtype.kind != "f":
        raise ArchiveError(f"{name} must be a floating-point array, got dtype {a.dtype}")
    # Explicit little-endian so files are portable; never a down-cast.
    return np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<")).tobytes()


def encode_example(
    data,
    seed: int,
    derivative: Optional[int] = None,
    parameter: Optional[int] = None,
    gradient=None,
) -> bytes:
    """Serialise one record as a tf.train.Example (bytes).

    data: float array of shape ``input_shape`` (its dtype is kept);
    seed: seed index; derivative/parameter: finite-difference sign (0 below,
    1 above) and parameter index, both or neither; gradient: dsim/dθ of shape
    ``input_shape + (n_params,)``, same dtype as data.
    """
    if (derivative is None) != (parameter is None):
        raise ArchiveError("derivative and parameter must be given together")
    if gradient is not None and np.asarray(gradient).dtype != np.asarray(data).dtype:
        raise ArchiveError(
            f"gradient dtype {np.asarray(gradient).dtype} differs from "
            f"data dtype {np.asarray(data).dtype}"
        )
    entries = {"data": _feature_bytes(_raw_le(data, "data")), "seed": _feature_int64(seed)}
    if derivative is not None:
        if int(derivative) not in (0, 1):
            raise ArchiveError(f"derivative sign must be 0 or 1, got {derivative}")
        entries["derivative"] = _feature_int64(derivative)
        entries["parameter"] = _feature_int64(parameter)
    if gradient is not None:
        entries["gradient"] = _feature_bytes(_raw_le(gradient, "gradient"))
    features = b"".join(
        _len_delimited(1, _len_delimited(1, k.encode()) + _len_delimited(2, v))
        for k, v in sorted(entries.items())
    )
    return _len_delimited(1, features)


# --------------------------------------------------------------------------- decode


def _read_varint(buf, pos: int):
    result = 0
    shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _signed64(value: int) -> int:
    return value - (1 << 64) if value >= (1 << 63) else value


def _skip(buf, pos: int, wire: int) -> int:
    if wire == 0:
        return _read_varint(buf, pos)[1]
    if wire == 1:
        return pos + 8
    if wire == 2:
        n, pos = _read_varint(buf, pos)
        return pos + n
    if wire == 5:
        return pos + 4
    raise ValueError(f"unsupported wire type {wire}")


def _within(pos: int, end: int, what: str) -> int:
    if pos > end:
        raise ValueError(f"{what} overruns its message")
    return pos


def _parse_feature(buf, start: int, end: int):
    """Return ("bytes", [bytes]) | ("int64", [int]) | ("float", [float]).

    Every length is checked against its enclosing message (a packed list
    must end exactly where its length says, inside its list), so that a
    record is accepted only when its bytes mean one thing: the streams'
    fast decoder (:func:`_parse_flat`) checks the same lengths."""
    pos = start
    kind, values = None, []
    while pos < end:
        tag, pos = _read_varint(buf, pos)
        field, wire = tag >> 3, tag & 7
        if wire != 2:
            pos = _within(_skip(buf, pos, wire), end, "feature field")
            continue
        n, pos = _read_varint(buf, pos)
        lst_end = _within(pos + n, end, "feature list")
        if field == 1:
            kind = "bytes"
            p = pos
            while p < lst_end:
                t, p = _read_varint(buf, p)
                if t != 0x0A:
                    raise ValueError(f"unexpected field tag {t} in a bytes list")
                m, p = _read_varint(buf, p)
                values.append(bytes(buf[p : _within(p + m, lst_end, "bytes value")]))
                p += m
        elif field == 3:
            kind = "int64"
            p = pos
            while p < lst_end:
                t, p = _read_varint(buf, p)
                if t == 0x0A:  # packed
                    m, p = _read_varint(buf, p)
                    q = _within(p + m, lst_end, "packed int64 list")
                    while p < q:
                        v, p = _read_varint(buf, p)
                        values.append(_signed64(v))
                    _within(p, q, "packed int64 value")
                elif t == 0x08:
                    v, p = _read_varint(buf, p)
                    values.append(_signed64(v))
                else:
                    raise ValueError(f"unexpected field tag {t} in an int64 list")
            _within(p, lst_end, "int64 list")
        elif field == 2:
            kind = "float"
            p = pos
            while p < lst_end:
                t, p = _read_varint(buf, p)
                if t == 0x0A:
                    m, p = _read_varint(buf, p)
                    _within(p + m, lst_end, "packed float list")
                    values.extend(struct.unpack_from(f"<{m // 4}f", buf, p))
                    p += m
                elif t == 0x0D:
                    values.append(struct.unpack_from("<f", buf, p)[0])
                    p += 4
                else:
                    raise ValueError(f"unexpected field tag {t} in a float list")
            _within(p, lst_end, "float list")
        pos = lst_end
    return kind, values


def parse_features(raw: bytes) -> dict:
    """Decode a serialised tf.train.Example into ``{name: (kind, values)}``.

    Raises ValueError on malformed protobuf.
    """
    buf = memoryview(raw)
    out = {}
    try:
        pos, end = 0, len(buf)
        while pos < end:
            tag, pos = _read_varint(buf, pos)
            if tag != 0x0A:  # Example.features
                pos = _skip(buf, pos, tag & 7)
                continue
            n, pos = _read_varint(buf, pos)
            fend = _within(pos + n, end, "features")
            while pos < fend:
                tag, pos = _read_varint(buf, pos)
                if tag & 7 != 2:
                    pos = _within(_skip(buf, pos, tag & 7), fend, "features field")
                    continue
                n, pos = _read_varint(buf, pos)
                eend = pos + n
                if tag != 0x0A:  # Features.feature map entry
                    pos = _within(eend, fend, "features field")
                    continue
                key, value = None, ("none", [])
                _within(eend, fend, "feature map entry")
                while pos < eend:
                    t, pos = _read_varint(buf, pos)
                    if t & 7 != 2:
                        pos = _within(_skip(buf, pos, t & 7), eend, "map entry field")
                        continue
                    m, pos = _read_varint(buf, pos)
                    _within(pos + m, eend, "map entry field")
                    if t == 0x0A:
                        key = bytes(buf[pos : pos + m]).decode()
                    elif t == 0x12:
                        value = _parse_feature(buf, pos, pos + m)
                    pos += m
                if key is not None:
                    out[key] = value
            if pos != fend:
                raise ValueError("feature map overruns its message")
        if pos != end:
            raise ValueError("message overruns the record")
    except (IndexError, ValueError, struct.error, UnicodeDecodeError) as e:
        raise ValueError(f"malformed tf.train.Example: {e}") from None
    return out


def parse_flat(raw: bytes) -> dict:
    """Fast decoder for Examples whose features each hold one value.

    Returns ``{name: bytes | int}`` (bytes_list → its one bytes value,
    int64_list → its one int).  Anything else (several values, float lists,
    unexpected layout) falls back to :func:`parse_features` semantics via
    ``{name: ("kind", values)}``-free conversion, or raises ValueError when
    malformed.  This is the hot path of the streams: a handful of byte reads
    per feature instead of a full protobuf walk.
    """
    try:
        return _parse_flat(raw)
    except (IndexError, ValueError):
        out = {}
        for name, (kind, values) in parse_features(raw).items():
            if len(values) != 1 or kind not in ("bytes", "int64"):
                raise ValueError(
                    f"feature {name!r}: expected one bytes or int64 value, got {len(values)} {kind}"
                )
            out[name] = values[0]
        return out


def _parse_flat(b: bytes, offsets: Optional[dict] = None) -> dict:
    """See :func:`parse_flat`; ``offsets``, if given, receives
    ``{name: (start, end)}`` of each value's bytes (the varint of an int)."""

    def varint(pos):
        x = b[pos]
        if x < 0x80:
            return x, pos + 1
        return _read_varint(b, pos)

    out = {}
    if b[0] != 0x0A:
        raise ValueError("not an Example")
    n, pos = varint(1)
    end = pos + n
    if end != len(b):
        raise ValueError("trailing bytes")
    while pos < end:
        if b[pos] != 0x0A:  # Features.feature map entry
            raise ValueError("unexpected field")
        n, pos = varint(pos + 1)
        entry_end = pos + n
        if b[pos] != 0x0A:  # key
            raise ValueError("map entry without key first")
        n, pos = varint(pos + 1)
        key = b[pos : pos + n].decode()
        pos += n
        if b[pos] != 0x12:  # value: Feature
            raise ValueError("map entry without value")
        n, pos = varint(pos + 1)
        if pos + n != entry_end:
            raise ValueError("feature overruns its entry")
        tag = b[pos]
        n, pos = varint(pos + 1)
        if pos + n != entry_end or b[pos] != 0x0A:
            raise ValueError("unexpected list layout")
        if tag == 0x0A:  # bytes_list with one value
            m, pos = varint(pos + 1)
            if pos + m != entry_end:
                raise ValueError("several bytes values")
            out[key] = b[pos:entry_end]
            if offsets is not None:
                offsets[key] = (pos, entry_end)
        elif tag == 0x1A:  # int64_list, packed, one value
            m, pos = varint(pos + 1)
            if pos + m != entry_end:  # the packed length must match what follows
                raise ValueError("packed int64 length does not match its list")
            start = pos
            v, pos = varint(pos)
            if offsets is not None:
                offsets[key] = (start, pos)
            if pos != entry_end:
                raise ValueError("several int64 values")
            out[key] = v - (1 << 64) if v >= (1 << 63) else v
        else:
            raise ValueError("unexpected feature kind")
        pos = entry_end
    return out


def _scalar(features: dict, name: str, path, record) -> int:
    kind, values = features.get(name, (None, []))
    if kind != "int64" or len(values) != 1:
        raise ArchiveError(
            f"feature {name!r}: expected one int64, got {kind} {values[:3]}", path, record
        )
    return values[0]


def _array(features: dict, name: str, dtype: np.dtype, shape: tuple, path, record):
    kind, values = features.get(name, (None, []))
    if kind != "bytes" or len(values) != 1:
        raise ArchiveError(f"feature {name!r}: expected one bytes value, got {kind}", path, record)
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(values[0]) != expected:
        raise ArchiveError(
            f"feature {name!r}: expected {expected} bytes ({dtype.name}{list(shape)}), "
            f"got {len(values[0])} (wrong dtype or shape)",
            path,
            record,
        )
    return np.frombuffer(values[0], dtype=dtype).reshape(shape)


def decode_example(
    raw: bytes, spec: RecordSpec, path: str | None = None, record: int | None = None
) -> dict:
    """Decode one record into numpy values checked against ``spec``.

    Returns ``{"seed": int, "data": dtype[input_shape]}`` plus
    ``derivative``/``parameter`` (ints) for finite-difference specs and
    ``gradient`` (dtype[input_shape + (n_params,)]) for gradient specs.
    Raises :class:`ArchiveError` naming ``path``/``record`` on any mismatch.
    """
    try:
        features = parse_features(raw)
    except ValueError as e:
        raise ArchiveError(str(e), path, record) from None
    return decode_features(features, spec, path, record)


def decode_features(
    features: dict, spec: RecordSpec, path: str | None = None, record: int | None = None
) -> dict:
    """:func:`decode_example` of a record already parsed by :func:`parse_features`."""
    out = {
        "seed": _scalar(features, "seed", path, record),
        "data": _array(features, "data", spec.np_dtype, tuple(spec.input_shape), path, record),
    }
    if spec.finite_difference:
        out["derivative"] = _scalar(features, "derivative", path, record)
        out["parameter"] = _scalar(features, "parameter", path, record)
    if spec.gradient:
        out["gradient"] = _array(
            features, "gradient", spec.np_dtype, spec.gradient_shape, path, record
        )
    return out


def record_seed(raw: bytes) -> tuple:
    """``(seed, derivative, parameter)`` of a record (None where absent)."""
    f = parse_features(raw)

    def get(n):
        return f[n][1][0] if n in f and f[n][0] == "int64" and f[n][1] else None

    return get("seed"), get("derivative"), get("parameter")
