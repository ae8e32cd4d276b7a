"""Guards at the edges of io/: damaged metadata and impossible sizes become FormatErrors.

zarr, json and the filesystem raise their own errors for damage a user's store can hold
(truncated JSON, missing keys, negative shapes, a document nested 100 000 deep). Readers wrap
the code that touches such metadata in :func:`damaged_metadata`, so the error names the element
and says what to do, and a caller's ``except SpatialFlowError`` sees it. Errors that are not
about the store (MemoryError, KeyboardInterrupt, a bug's AttributeError) pass through.

:func:`check_chunk_count` refuses a raster whose chunk grid is too fine to plan (10^12 pixels
over 1x1 chunks would be 10^12 tasks) before any task is made, in O(ndim).

:func:`storage_errors` does the same for the storage itself: an OSError (no such parent,
permission denied, disk full, read-only file system) or an object-store client's error
(botocore, aiohttp, icechunk) becomes a :class:`~spatialflow.errors.StorageError` naming the
URL and a fix chosen from the errno. StorageError is an OSError too, so callers that handle
I/O failures keep working.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from spatialflow.errors import FormatError, SpatialFlowError, StorageError

if TYPE_CHECKING:
    from spatialflow.dataset import Dataset

__all__ = [
    "MAX_RASTER_CHUNKS",
    "check_chunk_count",
    "check_links",
    "damaged_metadata",
    "first_line",
    "storage_error",
    "storage_errors",
]

MAX_RASTER_CHUNKS = 1 << 27  # ~134 M chunks per scale: a 3D volume of 2 TB in 16 kB chunks


def first_line(e: BaseException, limit: int = 300) -> str:
    """An error's first line, cut to ``limit`` characters (some carry whole documents)."""
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:limit]


def _damage_types() -> tuple[type[BaseException], ...]:
    import zarr.errors

    return (
        ValueError,  # includes json.JSONDecodeError and zarr's metadata validation errors
        TypeError,
        KeyError,
        IndexError,
        RecursionError,
        json.JSONDecodeError,
        zarr.errors.BaseZarrError,
    )


@contextlib.contextmanager
def damaged_metadata(where: str, fix: str = "repair or rewrite the element") -> Iterator[None]:
    """Turn errors from damaged metadata raised inside the block into a FormatError at
    ``where`` (SpatialFlowErrors pass unchanged)."""
    try:
        yield
    except SpatialFlowError:
        raise
    except _damage_types() as e:
        raise FormatError(
            f"{where}: damaged metadata ({type(e).__name__}: {first_line(e)}); {fix}"
        ) from e


def check_chunk_count(shape: Sequence[int], chunks: Sequence[int], where: str) -> None:
    """Refuse a chunk grid of more than :data:`MAX_RASTER_CHUNKS` chunks."""
    n = math.prod(-(-int(s) // max(int(c), 1)) for s, c in zip(shape, chunks, strict=False))
    if n > MAX_RASTER_CHUNKS:
        raise FormatError(
            f"{where}: shape {tuple(shape)} over chunks {tuple(chunks)} makes {n:.3g} chunks "
            f"(at most {MAX_RASTER_CHUNKS:.3g} per scale are planned); rechunk the array "
            "with larger chunks"
        )


def check_links(ds: Dataset, where: str) -> None:
    """Every table of a SpatialData store annotates elements the store holds (such a store is
    self-contained; an Icechunk repository a job wrote may hold tables annotating elements of
    the job's input repository, so repositories are not checked)."""
    try:
        ds.validate_links()
    except SpatialFlowError as e:
        raise FormatError(
            f"{where}/tables: {e}; restore the missing element or fix the table's region"
        ) from e


# --- storage failures ------------------------------------------------------------------------
_HINTS = {
    errno.ENOENT: "its parent directory does not exist; create it or choose another path",
    errno.ENOTDIR: "a part of the path is a file, not a directory; choose another path",
    errno.EACCES: "permission denied; choose a path you may write to",
    errno.EPERM: "operation not permitted; choose a path you may write to",
    errno.EROFS: "the file system is read-only; choose a writable path",
    errno.ENOSPC: "no space left on the device; free space or choose another destination",
    errno.EDQUOT: "the disk quota is exceeded; free space or choose another destination",
    errno.EFBIG: "a file would exceed the size allowed here; free space or choose another "
    "destination",
    errno.EISDIR: "a directory is in the way; choose another path",
}


def storage_error(url: str, e: BaseException, action: str = "write") -> StorageError:
    """A StorageError for a failure to ``action`` at ``url``, with a hint from its errno."""
    code = getattr(e, "errno", None)
    hint = _HINTS.get(code) if isinstance(code, int) else None
    if hint is None:
        text = str(e).lower()
        hint = next(
            (h for c, h in _HINTS.items() if os.strerror(c).lower() in text),
            "check the path or URL, the credentials (storage_options) and the network",
        )
    err = StorageError(f"{url}: cannot {action} ({type(e).__name__}: {first_line(e)}); {hint}")
    err.errno = code  # type: ignore[misc]
    return err


def _is_storage_failure(e: BaseException) -> bool:
    """OSErrors and the errors of object-store clients (botocore, aiohttp, icechunk)."""
    if isinstance(e, SpatialFlowError):
        return False
    if isinstance(e, OSError | TimeoutError):
        return True
    module = type(e).__module__ or ""
    return module.split(".")[0] in ("botocore", "aiobotocore", "aiohttp", "icechunk", "s3fs")


@contextlib.contextmanager
def storage_errors(url: str, action: str = "write") -> Iterator[None]:
    """Turn the storage's own failures inside the block into a :class:`StorageError`."""
    try:
        yield
    except BaseException as e:
        if _is_storage_failure(e):
            raise storage_error(url, e, action) from e
        raise


def unreadable_parquet(path: str, e: Exception, fs: Any = None) -> FormatError:
    """The FormatError for a parquet file pyarrow (or the filesystem) could not read."""
    protocol = getattr(fs, "protocol", ())
    protocols = (protocol,) if isinstance(protocol, str) else tuple(protocol)
    if "memory" in protocols and isinstance(e, FileNotFoundError):
        return FormatError(
            f"{path}: not found; memory:// stores exist in one process only, and this ran in "
            "another (a distributed worker): compute with scheduler='threads'"
        )
    return FormatError(
        f"{path}: unreadable parquet file ({type(e).__name__}: {e}); the file is damaged or "
        "not parquet: restore it from a copy or rewrite the element"
    )
