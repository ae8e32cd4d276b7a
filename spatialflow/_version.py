"""The installed version of spatialflow (recorded in commit metadata and store attrs)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("spatialflow")
except PackageNotFoundError:  # pragma: no cover - a source tree without install
    __version__ = "0+unknown"
