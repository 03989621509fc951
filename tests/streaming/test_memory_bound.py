"""A device stream holds at most its stated number of batches (``prefetch + 2``:
the queue's, the one being filled, the one the consumer holds), however slowly it
is consumed, and the two-pass engine adds only its in-flight groups.

Batches are counted where the reader allocates them
(``writers.stream_prefetch._new_batch``) and where they die (a weakref finalizer
on one of their arrays), so the test fails if the queue is unbounded or a stage
keeps batches it should have dropped."""

import gc
import threading
import time
import weakref

import jax
import numpy as np
import optax
import pytest

import imnn_stream as im
from writers import stream_prefetch
from writers.archive import write_arrays
from writers.streams import close_all, device_streams
from ..toy_problem import DELTA_THETA, THETA_FID, toy_data

N = 480  # n_s = n_d


@pytest.fixture(autouse=True)
def young_heap_only():
    """``gc.collect()`` below looks at the objects made during the test only: in the
    full suite's process (JAX, TensorFlow, Beam loaded) a full collection took ~1 s,
    which made the slow-consumer test's 40 collections 45 s instead of 3.5 s. Objects
    made during the test are collected exactly as before."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


class LiveBatches:
    """Counts batch dicts allocated by the readers and not yet freed, in all and
    per reader thread (one per device stream)."""

    def __init__(self, monkeypatch):
        self.live = self.peak = 0
        self.per_reader, self.peak_per_reader = {}, 0
        self.lock = threading.Lock()
        original = stream_prefetch._new_batch

        def counted(*args, **kw):
            batch = original(*args, **kw)
            reader = threading.get_ident()
            with self.lock:
                self.live += 1
                self.peak = max(self.peak, self.live)
                n = self.per_reader[reader] = self.per_reader.get(reader, 0) + 1
                self.peak_per_reader = max(self.peak_per_reader, n)
            weakref.finalize(batch["data"], self._freed, reader)
            return batch

        monkeypatch.setattr(stream_prefetch, "_new_batch", counted)

    def _freed(self, reader):
        with self.lock:
            self.live -= 1
            self.per_reader[reader] -= 1


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    f, n, _ = toy_data(11, N, N)
    root = str(tmp_path_factory.mktemp("mem") / "num")
    write_arrays(
        root,
        "numerical",
        THETA_FID,
        DELTA_THETA,
        fiducial=f,
        derivative=n,
        n_devices=2,
        records_per_shard=60,
    )
    return root


@pytest.mark.parametrize("prefetch", [1, 3])
def test_slow_consumer_holds_at_most_prefetch_plus_two_batches(archive, monkeypatch, prefetch):
    count = LiveBatches(monkeypatch)
    streams = device_streams(archive, "train", 1, 8, prefetch=prefetch)
    it = streams["fiducial"][0]  # the derivative stream is never consumed: stalled
    bound = prefetch + 2
    try:
        for _ in range(40):  # a slow consumer: the reader has time to run ahead
            batch = next(it)
            assert batch["data"].shape[0] == 8
            time.sleep(0.01)
            del batch
            gc.collect()
            assert count.peak_per_reader <= bound
        time.sleep(0.2)  # a stalled consumer: the readers must wait, not read on
        assert count.live <= 2 * bound
    finally:
        close_all(streams)
    assert count.peak_per_reader <= bound, f"{count.per_reader} live batches, bound {bound}"
    assert count.peak_per_reader >= prefetch + 1  # the queue did fill: the bound was exercised


def test_default_read_ahead_is_bytes_bound_and_still_holds(archive, monkeypatch):
    """Default prefetch: 4 MiB of batches (at least 2, at most an epoch's); the
    reader never holds more than that + 2."""
    assert stream_prefetch.default_prefetch(8, 240, 48) == 30  # small: the whole epoch
    assert stream_prefetch.default_prefetch(1000, 10**6, 64 * 64 * 4) == 2  # 16 MiB batches
    assert stream_prefetch.default_prefetch(100, 10**6, 400) == (4 << 20) // 40000
    count = LiveBatches(monkeypatch)
    streams = device_streams(archive, "train", 1, 8)
    fid, der = streams["fiducial"][0], streams["derivative"][0]
    # 4 MiB holds the whole epoch of tiny toy records (4 records per derivative seed)
    assert (fid.prefetch, der.prefetch) == (N // 8, 4 * N // 8)
    try:
        for _ in range(3):
            next(fid)
        deadline = time.monotonic() + 10  # the readers run ahead as far as their queues allow
        while count.peak_per_reader < der.prefetch + 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)  # and no further
        gc.collect()
    finally:
        close_all(streams)
    assert der.prefetch + 1 <= count.peak_per_reader <= der.prefetch + 2


def test_two_pass_fit_holds_at_most_its_stated_batches(archive, monkeypatch, cpu_devices):
    """Per device stream: the reader's prefetch + 2, plus the engine's groups in
    flight (a group is one batch here: batches are ≥ group_bytes/2); nothing is kept
    across batches, passes or iterations when the cache is off."""
    count = LiveBatches(monkeypatch)
    devices = cpu_devices[:2]
    imnn = im.DatasetNumericalGradientIMNN.from_archive(
        archive,
        model=im.models.mlp((8,), 2),
        optimiser=optax.adam(1e-3),
        key_or_state=jax.random.PRNGKey(0),
        host=devices[0],
        devices=devices,
        n_per_device=40,
        cache=0,
        prefetch=2,
    )
    imnn._strategy.engine.group_bytes = 1  # one batch per group
    try:
        imnn.fit(10.0, 0.1, min_iterations=3, patience=3, max_iterations=3)
        gc.collect()
    finally:
        imnn.close()
    n_streams = 2 * 2  # fiducial and derivative, 2 devices
    in_flight = imnn._strategy.engine.in_flight
    bound = n_streams * (2 + 2) + len(devices) * (in_flight + 1)
    assert count.peak <= bound, f"{count.peak} live batches, bound {bound}"
    assert count.peak_per_reader <= 2 + 2 + in_flight + 1


def test_stream_source_caches_only_what_it_is_told(archive, monkeypatch, cpu_devices):
    """With the cache on, the cached epoch's batches are kept on the (CPU) devices
    and the decoded host batches are freed; with it off live batches stay at the
    streaming bound (the cache is where memory may grow, by choice)."""
    count = LiveBatches(monkeypatch)
    # batches of n_per_device records, as counted below (by default a stream's batches
    # are whole multiples of it within sources.BATCH_BYTES: one an epoch here)
    monkeypatch.setattr("imnn_stream.streaming.BATCH_BYTES", None)
    devices = cpu_devices[:2]
    imnn = im.DatasetNumericalGradientIMNN.from_archive(
        archive,
        model=im.models.mlp((8,), 2),
        optimiser=optax.adam(1e-3),
        key_or_state=jax.random.PRNGKey(0),
        host=devices[0],
        devices=devices,
        n_per_device=40,
        cache=True,
    )
    try:
        imnn.fit(10.0, 0.1, min_iterations=2, patience=2, max_iterations=2)
        gc.collect()
        per_device = {"fiducial": N // 2 // 40, "derivative": 4 * N // 2 // 40}
        assert count.live == 0  # no decoded host batch outlives its transfer
        srcs = imnn._strategy.train
        for kind, per in srcs.items():
            for d, s in enumerate(per):
                assert s.cached is not None and len(s.cached) == per_device[kind]
                for _, batch, _ in s.cached:  # the cache is on the source's device
                    assert {a.device for a in batch.values()} == {devices[d]}
    finally:
        imnn.close()
    assert np.isfinite(imnn.history["detF"][-1])
