"""The record index's packed form (how shard writers hand it to the manifest step)."""

import numpy as np
import pytest

from writers.shard import FileMeta, pack_records, records_array, unpack_records


def _index(n, seed0=120):
    """A numerical shard's index: 4 records a seed, lengths that change where the
    seeds' varints grow (127 -> 128), offsets their running sum."""
    seeds = seed0 + np.arange(n) // 4
    lengths = 16400 + (seeds >= 128) + (seeds >= 16384)
    offsets = np.cumsum(lengths + 16) - (lengths + 16)
    return np.stack(
        [seeds, np.tile([0, 0, 1, 1], n)[:n], np.tile([0, 1, 0, 1], n)[:n], offsets, lengths], 1
    ).astype(np.int64)


@pytest.mark.parametrize("n", [0, 1, 2, 4096])
def test_pack_round_trip(n):
    a = _index(n)
    packed = pack_records(a)
    back = unpack_records(packed)
    assert back.dtype == np.int64 and back.shape == (n, 5) and back.flags.c_contiguous
    np.testing.assert_array_equal(back, a)
    np.testing.assert_array_equal(records_array(packed), a)
    np.testing.assert_array_equal(FileMeta("p", n, 0, 0, 0, "0", records=packed).records, a)
    if n == 4096:
        assert len(packed) < a.nbytes // 10


def test_unpack_refuses_what_is_not_an_index():
    packed = pack_records(_index(64))
    with pytest.raises(ValueError, match="not a packed record index"):
        unpack_records(b"x" + packed)
    with pytest.raises(ValueError, match="packed record index"):
        unpack_records(packed[:-3])
    wrong_count = packed[:4] + (65).to_bytes(8, "little") + packed[12:]
    with pytest.raises(ValueError, match="expected 2600"):
        unpack_records(wrong_count)
