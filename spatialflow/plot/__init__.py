"""Static plots of a Dataset: ``sf.plot(ds, ...)`` (see :mod:`spatialflow.plot.figure`).

``spatialflow.plot`` is both this package and the function ``sf.plot``: importing any module
of the package makes Python set the attribute ``spatialflow.plot`` to the package, so the
package itself is made callable (it forwards to :func:`~spatialflow.plot.figure.plot`) and
``sf.plot(ds)`` works whichever import happened first.
"""

from __future__ import annotations

import sys
import types
from typing import Any

from spatialflow.plot.figure import plot

__all__ = ["plot"]


class _CallablePackage(types.ModuleType):
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return plot(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
