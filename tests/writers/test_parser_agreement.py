"""The streams' fast decoders and the validating parser agree on every record
(issue 11): single-bit flips of real records are accepted by both, with the
same values, or refused by both.  Framing CRCs are not involved (the parsers
themselves are exercised on the flipped payloads)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from writers.archive import write_arrays
from writers.errors import ArchiveError
from writers.framing import read_records
from writers.schema import decode_example, encode_example
from writers.stream_decode import Source, record_fields


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    rng = np.random.default_rng(0)
    root = str(tmp_path_factory.mktemp("agree") / "a")
    m = write_arrays(
        root,
        "numerical",
        [1.0, 2.0],
        [0.1, 0.2],
        fiducial=rng.normal(size=(8, 3)).astype(np.float32),
        derivative=rng.normal(size=(4, 2, 2, 3)).astype(np.float32),
        records_per_shard=100,
    )
    out = []
    for kind in ("fiducial", "derivative"):
        spec, info = m.record_spec("train", kind), m.kind_info("train", kind)
        for f in m.files("train", kind):
            for r, raw in enumerate(read_records(os.path.join(root, f["path"]))):
                out.append((spec, info, raw, f["first_seed"] + r // info.records_per_seed))
    return root, out


def _batch(spec):
    b = {"seed": np.zeros(1, np.int64), "data": np.zeros((1, *spec.input_shape), spec.np_dtype)}
    if spec.finite_difference:
        b["derivative"] = np.zeros(1, np.int64)
        b["parameter"] = np.zeros(1, np.int64)
    return b


def validating(raw, spec, seed):
    """What the validator's parser makes of a record (plus the seed check the streams do)."""
    try:
        d = decode_example(raw, spec)
    except ArchiveError:
        return None
    if d["seed"] != seed:
        return None
    return {k: np.asarray(v).tobytes() for k, v in d.items()}


def streamed(root, raw, good, spec, info, seed, vectorised):
    """What a stream makes of a record: per record (``fill_one``), or through
    the vectorised template path primed with an intact record."""
    src = Source(root, [], info, record_fields(spec), False)
    b = _batch(spec)
    try:
        done = 0
        if vectorised:
            src.decode(_batch(spec), 0, np.frombuffer(good, np.uint8)[None], np.array([seed]))
            done = src.decode(b, 0, np.frombuffer(raw, np.uint8)[None], np.array([seed]))
        if not done:
            src.fill_one(b, 0, "f", 0, seed, raw)
    except ArchiveError:
        return None
    return {k: v[0].tobytes() for k, v in b.items()}


def test_intact_records_agree(records):
    root, recs = records
    for spec, info, raw, seed in recs:
        v = validating(raw, spec, seed)
        assert v is not None
        for vec in (False, True):
            assert streamed(root, raw, raw, spec, info, seed, vec) == v


def test_packed_length_mismatch_refused_by_both(records):
    """The disagreement found by the fuzz: the fast decoder ignored the packed
    int64 list's length byte."""
    root, recs = records
    spec, info, _, seed = recs[0]
    raw = encode_example(np.zeros(3, np.float32), seed)
    i = raw.rindex(bytes([0x1A, 0x03, 0x0A, 0x01]))  # seed: int64_list, packed, 1 byte
    bad = raw[: i + 3] + bytes([0x09]) + raw[i + 4 :]
    assert validating(bad, spec, seed) is None
    assert streamed(root, bad, raw, spec, info, seed, False) is None
    assert streamed(root, bad, raw, spec, info, seed, True) is None


def test_single_bit_flips_agree(records):
    root, recs = records
    rng = np.random.default_rng(11)
    disagree = []
    accepted = 0
    for _ in range(5000):
        spec, info, raw, seed = recs[rng.integers(len(recs))]
        pos, bit = int(rng.integers(len(raw))), int(rng.integers(8))
        flipped = bytearray(raw)
        flipped[pos] ^= 1 << bit
        flipped = bytes(flipped)
        v = validating(flipped, spec, seed)
        accepted += v is not None
        for vec in (False, True):
            if streamed(root, flipped, raw, spec, info, seed, vec) != v:
                disagree.append((pos, bit, vec, flipped.hex()))
    assert not disagree, f"{len(disagree)} of 5000 flips disagree, e.g. {disagree[:3]}"
    assert 0 < accepted < 5000  # flips of data bytes are accepted, of structure refused
