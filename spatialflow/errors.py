"""Every error a user of spatialflow can cause.

Each class is a :class:`SpatialFlowError`, so ``except sf.SpatialFlowError`` catches all of them.
Messages name the element, field or path at fault and say what to do about it; no bare
exception from a dependency should reach a user for input they gave.
"""

from __future__ import annotations

__all__ = [
    "CommitConflictError",
    "ConfigError",
    "FormatError",
    "PlanError",
    "SpatialFlowError",
    "StorageError",
    "TransformError",
    "ValidationError",
]


class SpatialFlowError(Exception):
    """Base class of every error raised by spatialflow for input a user gave."""


class ValidationError(SpatialFlowError, ValueError):
    """An element, name or Dataset does not satisfy the data model."""


class TransformError(SpatialFlowError, ValueError):
    """A coordinate transformation is ill-formed, not invertible, or has no path."""


class FormatError(SpatialFlowError):
    """A store does not hold what its format promises (bad metadata, missing parts...)."""


class PlanError(SpatialFlowError, ValueError):
    """An operation cannot be planned with the given arguments."""


class ConfigError(SpatialFlowError, ValueError):
    """A job configuration is invalid; the message names the field."""


class CommitConflictError(SpatialFlowError):
    """A concurrent commit touched the same data; nothing of this job was committed."""


class StorageError(SpatialFlowError, OSError):
    """A store cannot be created, written or reached (no such parent, permission denied, disk
    full, the object store failing); nothing of the write was committed. Also an OSError, so
    code that handles I/O failures keeps handling it."""
