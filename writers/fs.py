"""The one file-system layer: local paths and URLs (gs://, s3://, ...).

Local paths use the operating system directly (fast, and ``os.replace``
gives an atomic rename).  URLs go through Apache Beam's ``FileSystems``:
Beam is already a dependency (the generation jobs run on it), it ships
gs:// and s3:// support with the ``[gcp,aws]`` extras, and its pipeline
options are exactly how those jobs are pointed at a bucket, an emulator
(``--no_auth`` with ``STORAGE_EMULATOR_HOST``) or an S3-compatible endpoint
(``--s3_endpoint_url``).  fsspec would need gcsfs/s3fs on top and a second
way of configuring credentials.

Beam's ``FileSystems`` builds a new storage client for every call (0.3–1 s
each for S3), so for gs:// and s3:// this module keeps one of Beam's
``GcsIO`` / ``S3IO`` objects per scheme, built from the same options, and
calls it directly; other schemes go through ``FileSystems``.

Configure URL access once per process with :func:`configure` (a list of
Beam-style flags), or with the environment variable
``IMNN_STREAM_FS_OPTIONS`` (the same flags, shell-quoted), which also
reaches subprocesses such as the command line tool.
"""

from __future__ import annotations

import contextlib
import io
import os
import posixpath
import re
import shlex
import tempfile
import uuid
from typing import Iterator

from .errors import ArchiveError, MissingFileError, WriteError

_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
_configured = False
TEMP_MARKER = ".tmp-"


def is_url(path: str) -> bool:
    return bool(_URL.match(str(path)))


def join(root: str, *parts: str) -> str:
    """Join with '/' for URLs and os.path.join for local paths.

    The parts stay below ``root``: an absolute part or one with a ``..``
    segment raises :class:`ArchiveError` (``os.path.join`` and
    ``posixpath.join`` would silently drop ``root`` for an absolute part).
    """
    root = str(root)
    for part in parts:
        part = str(part)
        if part.startswith(("/", "\\")) or os.path.isabs(part) or ".." in re.split(r"[/\\]", part):
            raise ArchiveError(f"path {part!r} is not a relative path inside {root}", root)
    if is_url(root):
        return posixpath.join(root.rstrip("/") + "/", *parts)
    return os.path.join(root, *parts)


def configure(flags=None) -> None:
    """Set Beam file-system options, e.g. ``["--no_auth"]`` or
    ``["--s3_endpoint_url=http://127.0.0.1:5000"]``.  Also accepts a
    PipelineOptions.  ``None`` re-reads ``IMNN_STREAM_FS_OPTIONS``."""
    global _configured
    from apache_beam.io.filesystems import FileSystems
    from apache_beam.options.pipeline_options import PipelineOptions

    if flags is None:
        flags = shlex.split(os.environ.get("IMNN_STREAM_FS_OPTIONS", ""))
    opts = flags if isinstance(flags, PipelineOptions) else PipelineOptions(list(flags))
    FileSystems.set_options(opts)
    _clients.clear()
    _configured = True


_clients: dict = {}


def _beam():
    from apache_beam.io.filesystems import FileSystems

    if not _configured:
        configure(None)
    return FileSystems


def _store(path: str):
    """Cached Beam GcsIO / S3IO for gs:// and s3:// paths, else None."""
    scheme = str(path).split("://", 1)[0].lower()
    if scheme not in ("gs", "s3"):
        return None
    if scheme not in _clients:
        opts = _beam()._pipeline_options
        if opts is None:
            from apache_beam.options.pipeline_options import PipelineOptions

            opts = PipelineOptions([])
        if scheme == "gs":
            from apache_beam.io.gcp import gcsio
            from apache_beam.options.pipeline_options import GoogleCloudOptions

            client = None
            if opts.view_as(GoogleCloudOptions).no_auth:
                # Beam would first retry the default-credential lookup for
                # ~25 s; --no_auth means anonymous (STORAGE_EMULATOR_HOST is
                # honoured by the storage client).
                from google.cloud import storage

                client = storage.Client.create_anonymous_client()
            _clients[scheme] = gcsio.GcsIO(storage_client=client, pipeline_options=opts)
        else:
            from apache_beam.io.aws import s3io

            _clients[scheme] = s3io.S3IO(options=opts)
    return _clients[scheme]


def _range_fetcher(store, path: str):
    """``fetch(start, end) -> bytes`` of one object by ranged GETs, for the
    read-ahead reader (:mod:`writers.readahead`); None when the client is not
    one we know."""
    scheme, rest = str(path).split("://", 1)
    bucket, _, key = rest.partition("/")
    if scheme.lower() == "gs":
        client = getattr(store, "client", None)
        if client is None or not hasattr(client, "bucket"):
            return None
        gcs_bucket = client.bucket(bucket)

        def fetch(start: int, end: int) -> bytes:
            # a new Blob per call: downloads update the object's properties
            return gcs_bucket.blob(key).download_as_bytes(
                start=start, end=end - 1, checksum=None, raw_download=True
            )

        return fetch
    boto = getattr(getattr(store, "client", None), "client", None)  # Beam's wrapper's boto3
    if boto is None or not hasattr(boto, "get_object"):
        return None

    def fetch(start: int, end: int) -> bytes:  # boto3 clients are thread-safe
        body = boto.get_object(Bucket=bucket, Key=key, Range=f"bytes={start}-{end - 1}")["Body"]
        with contextlib.closing(body):
            return body.read()

    return fetch


def _uncompressed():
    from apache_beam.io.filesystem import CompressionTypes

    return CompressionTypes.UNCOMPRESSED


def exists(path: str) -> bool:
    store = _store(path)
    if store is not None:
        return store.exists(path)
    if is_url(path):
        return _beam().exists(path)
    return os.path.exists(path)


def size(path: str) -> int:
    """Size in bytes; MissingFileError when absent."""
    store = _store(path)
    if store is not None:
        if not store.exists(path):
            raise MissingFileError("file does not exist", path)
        return store.size(path)
    if is_url(path):
        fs = _beam()
        try:
            result = fs.match([path])[0].metadata_list
        except Exception as e:  # Beam raises BeamIOError for missing buckets
            raise MissingFileError(f"cannot stat: {e}", path) from None
        if not result:
            raise MissingFileError("file does not exist", path)
        return result[0].size_in_bytes
    try:
        return os.path.getsize(path)
    except FileNotFoundError:
        raise MissingFileError("file does not exist", path) from None


def open_read(path: str, buffer_size: int = 1 << 20):
    """Binary file object for reading; MissingFileError when absent.
    ``buffer_size`` 0: a local file unbuffered (for readers with a buffer of their own)."""
    store = _store(path)
    if store is not None:
        if not store.exists(path):
            raise MissingFileError("file does not exist", path)
        from . import readahead

        fetch = _range_fetcher(store, path)
        scheme = str(path).split("://", 1)[0].lower()
        if fetch is not None and (readahead.enabled(scheme) or scheme == "s3"):
            # s3:// never goes through Beam's S3IO reader: its client keeps one
            # download stream for every file, and reader threads sharing it read
            # each other's bytes (the stream's CRC checks caught it); without
            # read-ahead it reads one chunk at a time instead
            ahead = None if readahead.enabled(scheme) else 0
            return readahead.RangedReader(fetch, store.size(path), path, ahead=ahead)
        return store.open(path, "rb", read_buffer_size=max(buffer_size, 1 << 20) * 8)
    if is_url(path):
        fs = _beam()
        if not fs.exists(path):
            raise MissingFileError("file does not exist", path)
        return fs.open(path, compression_type=_uncompressed())
    try:
        return open(path, "rb", buffering=buffer_size)
    except FileNotFoundError:
        raise MissingFileError("file does not exist", path) from None
    except IsADirectoryError:
        raise MissingFileError("is a directory, not a file", path) from None


def read_bytes(path: str) -> bytes:
    with open_read(path) as f:
        return f.read()


def list_files(root: str) -> list[str]:
    """All files below ``root`` as sorted paths relative to it ('/'-separated)."""
    store = _store(root)
    if store is not None:
        base = root.rstrip("/") + "/"
        try:
            names = [p for p, _ in store.list_files(base)]
        except Exception:  # a missing bucket lists as empty
            return []
        return sorted(p[len(base) :] for p in names if p.startswith(base))
    if is_url(root):
        fs = _beam()
        base = root.rstrip("/") + "/"
        try:
            metas = fs.match([base + "**"])[0].metadata_list
        except Exception:
            return []
        return sorted(m.path[len(base) :] for m in metas if m.path.startswith(base))
    out = []
    for dirpath, _, files in os.walk(root):
        for name in files:
            rel = os.path.relpath(os.path.join(dirpath, name), root)
            out.append(rel.replace(os.sep, "/"))
    return sorted(out)


def delete(path: str) -> None:
    store = _store(path)
    if store is not None:
        store.delete(path)
    elif is_url(path):
        _beam().delete([path])
    else:
        os.remove(path)


class _Discard(Exception):
    pass


def fsync_dir(path: str) -> None:
    """fsync a local directory so that renames and creations in it are
    durable (a no-op for URLs, and where directories cannot be fsynced)."""
    path = str(path)
    if is_url(path):
        return
    try:
        fd = os.open(path or ".", os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on directories
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_writer(path: str, sync: bool = False) -> Iterator[io.BufferedIOBase]:
    """Write ``path`` so that it appears under its name only when complete.

    Local: writes ``.<name>.tmp-<random>`` beside it and ``os.replace``s it
    on success; on an exception the temporary file is removed and an
    existing file at ``path`` is untouched.  URL: the bytes are spooled to a
    local temporary file and uploaded under the final name only after the
    ``with`` block succeeds (object stores publish an object when its upload
    completes).  Errors opening or writing become :class:`WriteError`.
    ``sync`` (local paths): fsync the file before its rename and the
    directory after it (:mod:`writers.durable` passes it).
    """
    if is_url(path):
        spool = tempfile.SpooledTemporaryFile(max_size=64 << 20)
        try:
            yield spool
            spool.seek(0)
            store = _store(path)
            try:
                with (
                    store.open(path, "wb")
                    if store is not None
                    else _beam().create(path, compression_type=_uncompressed())
                ) as out:
                    while chunk := spool.read(8 << 20):
                        out.write(chunk)
            except Exception as e:
                raise WriteError(f"cannot upload: {type(e).__name__}: {e}", path) from e
        finally:
            spool.close()
        return
    directory, name = os.path.split(os.path.abspath(path))
    try:
        os.makedirs(directory, exist_ok=True)
        tmp = os.path.join(directory, f".{name}{TEMP_MARKER}{uuid.uuid4().hex[:12]}")
        f = open(tmp, "wb", buffering=1 << 20)
    except OSError as e:
        raise WriteError(f"cannot write: {e.strerror or e}", path) from e
    try:
        with f:
            yield f
            if sync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
        if sync:
            fsync_dir(directory)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def write_bytes(path: str, data: bytes) -> None:
    """Atomically write ``data`` to ``path``."""
    with atomic_writer(path) as f:
        f.write(data)
