"""The vectorised framing check of runs of equal-length records
(``writers.framing.scan_run``): the run CRC check (runs of ≥ 16 records) and the
per-record one agree with google-crc32c, and a single bad record in a run stops the
run exactly before it, whichever path checks it."""

import struct

import google_crc32c
import numpy as np
import pytest

from writers import framing
from writers.crc32c_native import crc32c_at
from writers.framing import masked_crc, scan_run


def _frame(payload: bytes) -> bytes:
    n = struct.pack("<Q", len(payload))
    return n + struct.pack("<I", masked_crc(n)) + payload + struct.pack("<I", masked_crc(payload))


def _run(k, length, seed=0):
    rng = np.random.default_rng(seed)
    payloads = [rng.bytes(length) for _ in range(k)]
    return bytearray(b"".join(_frame(p) for p in payloads)), payloads


def test_crc32c_at_matches_google_crc32c():
    buf, payloads = _run(40, 77)
    rec = 77 + framing.FRAMING_BYTES
    offsets = np.arange(12, 12 + 40 * rec, rec)
    got = crc32c_at(np.frombuffer(bytes(buf), np.uint8), offsets, 77)
    assert got.tolist() == [google_crc32c.value(p) for p in payloads]
    with pytest.raises(ValueError, match="outside"):
        crc32c_at(np.frombuffer(bytes(buf), np.uint8), [len(buf) - 10], 77)


@pytest.mark.parametrize("k", [5, 16, 40, 300])
@pytest.mark.parametrize("where", ["payload", "footer"])
def test_one_bad_record_stops_the_run_before_it(k, where):
    length = 83
    buf, _ = _run(k, length, seed=k)
    assert scan_run(bytes(buf), 0, k, True) == (length, k)
    bad = k // 2
    rec = length + framing.FRAMING_BYTES
    at = bad * rec + (12 + 7 if where == "payload" else 12 + length + 1)
    buf[at] ^= 0x40
    assert scan_run(bytes(buf), 0, k, True) == (length, bad)
    assert scan_run(bytes(buf), 0, k, False) == (length, k)  # CRCs not checked: all


def test_runs_of_16_or_more_are_checked_at_once(monkeypatch):
    """A good run of ≥ 16 records costs one CRC over its bytes, no per-record calls
    (per record was ~3 µs a record, the bulk of a small-record reader's time)."""
    buf, _ = _run(16, 80)

    def per_record(*args):
        raise AssertionError("checked record by record")

    monkeypatch.setattr(framing, "crc32c_at", per_record)
    assert scan_run(bytes(buf), 0, 16, True) == (80, 16)
    with pytest.raises(AssertionError, match="record by record"):
        scan_run(bytes(buf), 0, 15, True)  # fewer: one by one
