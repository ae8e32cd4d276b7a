"""Shared fixtures: a real multi-process Dask cluster and a real Icechunk repository on disk."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def _cluster() -> Iterator[object]:
    """One real LocalCluster for the session: 2 worker processes, 1 thread each."""
    from distributed import Client, LocalCluster

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cluster = LocalCluster(
            processes=True,
            n_workers=2,
            threads_per_worker=1,
            dashboard_address=None,
            memory_limit="4GiB",
        )
    client = Client(cluster, set_as_default=False)
    try:
        yield client
    finally:
        client.close()
        cluster.close()


@pytest.fixture
def cluster_client(_cluster: object) -> Iterator[object]:
    """A ``distributed.Client`` on a real LocalCluster (2 worker processes, 1 thread each),
    Dask's default scheduler for the duration of the test only: a test that does not ask
    for it runs on Dask's local schedulers, whatever ran before it."""
    import dask

    with dask.config.set(scheduler=_cluster), _cluster.as_current():  # type: ignore[attr-defined]
        yield _cluster


@pytest.fixture
def icechunk_repo(tmp_path: Path) -> object:
    """A new, empty Icechunk repository on local disk (``.path`` holds its directory)."""
    import icechunk

    path = tmp_path / "repo.icechunk"
    repo = icechunk.Repository.create(icechunk.local_filesystem_storage(str(path)))
    repo.path = path  # type: ignore[attr-defined]
    return repo


# --- storage tests: a SpatialData object with every kind and feature, its oracle comparison --
def _sd_transforms() -> dict:
    """Transforms to several coordinate systems, of every kind spatialdata 0.8 stores."""
    import numpy as np
    from spatialdata import transformations as sdt

    aff = np.array([[1.1, 0.3, 5.0], [-0.2, 0.9, -7.0], [0.0, 0.0, 1.0]])
    return {
        "global": sdt.Scale([0.5, 2.0], axes=("y", "x")),
        "moved": sdt.Translation([10.0, -3.0], axes=("x", "y")),
        "aligned": sdt.Affine(aff, input_axes=("x", "y"), output_axes=("x", "y")),
        "chained": sdt.Sequence(
            [
                sdt.Scale([2.0, 3.0], axes=("x", "y")),
                sdt.Translation([1.0, 2.0], axes=("x", "y")),
                sdt.Affine(aff, input_axes=("x", "y"), output_axes=("x", "y")),
            ]
        ),
        "swapped": sdt.MapAxis({"x": "y", "y": "x"}),
        "same": sdt.Identity(),
    }


def make_full_sdata(n_points: int = 5000, n_genes: int = 200) -> object:
    """A SpatialData object built with spatialdata's own models, holding every kind and
    feature the storage layer must keep: multiscale image with channel names, multiscale
    labels, 3D points with a 200-category feature (> 127) and an instance key and a string
    column, polygons + multipolygons (one with a hole) with a non-range index, circles with a
    string index, and two tables (several regions / one region) with region keys."""
    import warnings

    import anndata as ad
    import dask.dataframe as dd
    import geopandas as gpd
    import numpy as np
    import pandas as pd
    import scipy.sparse as sp
    import shapely
    import spatialdata as sd
    from spatialdata.models import (
        Image2DModel,
        Labels2DModel,
        PointsModel,
        ShapesModel,
        TableModel,
    )

    rng = np.random.default_rng(0)
    t = _sd_transforms
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        image = Image2DModel.parse(
            rng.integers(0, 60000, (3, 64, 48), dtype=np.uint16),
            dims=("c", "y", "x"),
            c_coords=["DAPI", "PolyT", "CD45"],
            scale_factors=[2, 2],
            chunks=(1, 32, 32),
            transformations=t(),
        )
        labels = Labels2DModel.parse(
            rng.integers(0, 50, (64, 48), dtype=np.int32),
            dims=("y", "x"),
            scale_factors=[2],
            chunks=(32, 32),
            transformations=t(),
        )
        genes = [f"gene_{i:03d}" for i in range(n_genes)][::-1]  # not sorted: order matters
        frame = pd.DataFrame(
            {
                "x": rng.random(n_points) * 48,
                "y": rng.random(n_points) * 64,
                "z": rng.random(n_points) * 5,
                "gene": pd.Categorical(rng.choice(genes, n_points), categories=genes),
                "cell_id": rng.integers(-1, 20, n_points).astype(np.int64),
                "qv": rng.random(n_points).astype(np.float32),
                "codeword": rng.choice(["aa", "bb", "cc"], n_points),
            }
        )
        points = PointsModel.parse(
            dd.from_pandas(frame, npartitions=3),
            feature_key="gene",
            instance_key="cell_id",
            transformations=t(),
        )
        polygons = [
            shapely.box(0, 0, 4, 4),
            shapely.Polygon(
                [(10, 10), (14, 10), (12, 15)], holes=[[(11.5, 11), (12.5, 11), (12, 12)]]
            ),
            shapely.MultiPolygon([shapely.box(20, 20, 22, 22), shapely.box(25, 25, 27, 28)]),
            shapely.box(30, 1, 33, 5),
        ]
        cells = ShapesModel.parse(
            gpd.GeoDataFrame(
                {"area": [16.0, 5.5, 10.0, 12.0], "kind": ["a", "b", "a", "c"]},
                geometry=polygons,
                index=pd.Index([3, 5, 7, 9]),
            ),
            transformations=t(),
        )
        spots = ShapesModel.parse(
            gpd.GeoDataFrame(
                {"radius": [1.0, 2.5, 3.0]},
                geometry=shapely.points([[1, 1], [10, 20], [30, 40]]),
                index=pd.Index(["s1", "s2", "s3"]),
            ),
            transformations=t(),
        )
        obs = pd.DataFrame(
            {
                "region": pd.Categorical(["cells"] * 4 + ["lab"] * 3),
                "instance_id": np.array([3, 5, 7, 9, 1, 2, 3], dtype=np.int64),
                "cell_type": pd.Categorical(["T", "B", "T", "M", "T", "B", "B"]),
                "score": rng.random(7),
            },
            index=[f"r{i}" for i in range(7)],
        )
        table = TableModel.parse(
            ad.AnnData(
                X=rng.random((7, 5)).astype(np.float32),
                obs=obs,
                var=pd.DataFrame(index=[f"v{i}" for i in range(5)]),
                obsm={"spatial": rng.random((7, 2))},
            ),
            region=["cells", "lab"],
            region_key="region",
            instance_key="instance_id",
        )
        spot_obs = pd.DataFrame(
            {"region": pd.Categorical(["spots"] * 3), "spot_id": ["s1", "s2", "s3"]},
            index=["a", "b", "c"],
        )
        spot_table = TableModel.parse(
            ad.AnnData(X=sp.random(3, 4, density=0.5, format="csr", random_state=0), obs=spot_obs),
            region="spots",
            region_key="region",
            instance_key="spot_id",
        )
        return sd.SpatialData(
            images={"morphology": image},
            labels={"lab": labels},
            points={"transcripts": points},
            shapes={"cells": cells, "spots": spots},
            tables={"table": table, "spot_table": spot_table},
        )


@pytest.fixture(scope="session")
def sd_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """make_full_sdata() written by spatialdata 0.8 itself (read-only for tests)."""
    import warnings

    path = tmp_path_factory.mktemp("oracle") / "full.zarr"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        make_full_sdata().write(path)
    return path


@pytest.fixture(scope="session")
def sd_expected(sd_store: Path) -> object:
    """spatialdata's own reading of ``sd_store``: what every round trip must give back."""
    return read_sd(sd_store)


def read_sd(path: object) -> object:
    """spatialdata.read_zarr, quietly."""
    import warnings

    import spatialdata as sd

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return sd.read_zarr(path)


def _sd_scales(el: object) -> list:
    import xarray as xr

    if isinstance(el, xr.DataTree):
        keys = sorted(el.children, key=lambda k: int(k.removeprefix("scale")))
        return [next(iter(el[k].to_dataset().data_vars.values())) for k in keys]
    return [el]


def _assert_transforms_equal(a: object, b: object, where: str) -> None:
    import numpy as np
    from spatialdata.models import get_axes_names
    from spatialdata.transformations import get_transformation

    ta, tb = get_transformation(a, get_all=True), get_transformation(b, get_all=True)
    assert sorted(ta) == sorted(tb), f"{where}: coordinate systems {sorted(ta)} != {sorted(tb)}"
    axes = tuple(ax for ax in get_axes_names(a) if ax != "c")
    for cs in ta:
        assert type(ta[cs]) is type(tb[cs]), (
            f"{where}: transform to {cs!r}: {type(ta[cs]).__name__} != {type(tb[cs]).__name__}"
        )
        np.testing.assert_allclose(
            ta[cs].to_affine_matrix(input_axes=axes, output_axes=axes),
            tb[cs].to_affine_matrix(input_axes=axes, output_axes=axes),
            rtol=0,
            atol=1e-12,
            err_msg=f"{where}: transform to {cs!r}",
        )


def _assert_raster_equal(a: object, b: object, where: str) -> None:
    import numpy as np

    la, lb = _sd_scales(a), _sd_scales(b)
    assert type(a) is type(b), f"{where}: {type(a).__name__} != {type(b).__name__}"
    assert len(la) == len(lb), f"{where}: {len(la)} scales != {len(lb)}"
    for k, (x, y) in enumerate(zip(la, lb, strict=True)):
        assert x.dims == y.dims, f"{where} scale {k}: dims {x.dims} != {y.dims}"
        assert x.dtype == y.dtype, f"{where} scale {k}: dtype {x.dtype} != {y.dtype}"
        np.testing.assert_array_equal(x.values, y.values, err_msg=f"{where} scale {k}")
        for d in x.dims:
            np.testing.assert_array_equal(
                x.coords[d].values, y.coords[d].values, err_msg=f"{where} scale {k}: coords {d}"
            )
    _assert_transforms_equal(a, b, where)


def _assert_points_equal(a: object, b: object, where: str) -> None:
    import pandas as pd

    ka, kb = a.attrs["spatialdata_attrs"], b.attrs["spatialdata_attrs"]
    assert ka == kb, f"{where}: feature/instance keys {ka} != {kb}"
    fa, fb = a.compute(), b.compute()
    pd.testing.assert_frame_equal(fa, fb, check_exact=True, obj=where)
    feature = ka.get("feature_key")
    if feature:
        assert list(fa[feature].cat.categories) == list(fb[feature].cat.categories)
    _assert_transforms_equal(a, b, where)


def _assert_shapes_equal(a: object, b: object, where: str) -> None:
    import numpy as np
    import pandas as pd
    import shapely

    assert a.geometry.name == b.geometry.name == "geometry", where
    pd.testing.assert_frame_equal(
        pd.DataFrame(a.drop(columns="geometry")),
        pd.DataFrame(b.drop(columns="geometry")),
        check_exact=True,
        obj=where,
    )
    types_a = shapely.get_type_id(a.geometry.values)
    np.testing.assert_array_equal(types_a, shapely.get_type_id(b.geometry.values), where)
    same = shapely.equals_exact(a.geometry.values, b.geometry.values, tolerance=0)
    assert same.all(), f"{where}: geometries differ at rows {np.flatnonzero(~same)}"
    assert a.crs == b.crs, f"{where}: crs {a.crs} != {b.crs}"
    _assert_transforms_equal(a, b, where)


def _dense(x: object) -> object:
    import numpy as np
    import scipy.sparse as sp

    return x.toarray() if sp.issparse(x) else np.asarray(x)


def _assert_table_equal(a: object, b: object, where: str) -> None:
    import numpy as np
    import pandas as pd
    import scipy.sparse as sp

    assert sp.issparse(a.X) == sp.issparse(b.X), f"{where}: X sparse vs dense"
    assert a.X.dtype == b.X.dtype, f"{where}: X dtype {a.X.dtype} != {b.X.dtype}"
    np.testing.assert_array_equal(_dense(a.X), _dense(b.X), err_msg=f"{where}.X")
    pd.testing.assert_frame_equal(a.obs, b.obs, check_exact=True, obj=f"{where}.obs")
    pd.testing.assert_frame_equal(a.var, b.var, check_exact=True, obj=f"{where}.var")
    assert sorted(a.obsm) == sorted(b.obsm), f"{where}.obsm"
    for k in a.obsm:
        np.testing.assert_array_equal(a.obsm[k], b.obsm[k], err_msg=f"{where}.obsm[{k}]")

    def links(t: object) -> dict:
        d = dict(t.uns["spatialdata_attrs"])
        if isinstance(d["region"], np.ndarray):
            d["region"] = d["region"].tolist()
        return d

    assert links(a) == links(b), f"{where}: table links {links(a)} != {links(b)}"


def assert_sdata_equal(a: object, b: object) -> None:
    """Every element of two SpatialData objects equal: values, dtypes, index, categories,
    channel names, coordinates, transforms (type and matrix), keys and table links."""
    checks = {
        "images": _assert_raster_equal,
        "labels": _assert_raster_equal,
        "points": _assert_points_equal,
        "shapes": _assert_shapes_equal,
        "tables": _assert_table_equal,
    }
    for kind, check in checks.items():
        ea, eb = getattr(a, kind), getattr(b, kind)
        assert sorted(ea) == sorted(eb), f"{kind}: {sorted(ea)} != {sorted(eb)}"
        for name in ea:
            check(ea[name], eb[name], f"{kind}/{name}")


class Oracle:
    """spatialdata 0.8 as the oracle: build the full object, read a store, compare."""

    full = staticmethod(make_full_sdata)
    read = staticmethod(read_sd)
    assert_equal = staticmethod(assert_sdata_equal)


@pytest.fixture(scope="session")
def oracle() -> Oracle:
    return Oracle()


# --- an S3-compatible server on loopback -----------------------------------------------------
_MOTO = """
import logging, sys
import moto.backends
# moto lists its own package directory on every request to route it; the list never changes
modules = tuple(moto.backends.list_of_moto_modules())
moto.backends.list_of_moto_modules = lambda: modules
logging.getLogger("werkzeug").setLevel(logging.ERROR)
from moto.server import main
main(["-H", "127.0.0.1", "-p", sys.argv[1]])
"""


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def s3_server() -> Iterator[dict[str, str]]:
    """moto's S3-compatible server on 127.0.0.1 (a free port), with dummy credentials; yields
    s3fs-style storage_options (endpoint_url, key, secret).

    The server runs in its own process (moto's ThreadedMotoServer would serve requests in this
    process, competing with the client for the GIL and doubling every S3 test's time)."""
    import os
    import subprocess
    import sys
    import time
    import urllib.request

    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", _MOTO, str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120  # a loaded machine imports moto slowly
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"moto server exited: {proc.stderr.read().decode()[-2000:]}")
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        else:
            raise RuntimeError(f"moto server did not answer on {endpoint}")
        yield {"endpoint_url": endpoint, "key": "testing", "secret": "testing"}
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def s3_bucket(s3_server: dict[str, str], request: pytest.FixtureRequest) -> str:
    """A new, empty bucket on the moto server; its name."""
    import re

    import s3fs

    name = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-") + "-bucket"
    fs = s3fs.S3FileSystem(
        key=s3_server["key"], secret=s3_server["secret"], endpoint_url=s3_server["endpoint_url"]
    )
    fs.mkdir(name)
    s3fs.S3FileSystem.clear_instance_cache()
    return name
