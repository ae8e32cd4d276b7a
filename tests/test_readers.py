"""The reader protocol: both built-in layouts through it, a plug-in through entry points, and
the error that lists every reader tried."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import spatialflow as sf
from spatialflow.io.readers.registry import BUILTIN_READERS, guess_reader, reader_names


def _small() -> sf.Dataset:
    import dask.dataframe as dd

    df = pd.DataFrame(
        {
            "x": np.arange(10.0),
            "y": np.arange(10.0) * 2,
            "gene": pd.Categorical(list("ababababab")),
        }
    )
    return sf.Dataset(
        points={"pts": sf.Points(dd.from_pandas(df, npartitions=2), feature_key="gene")}
    )


def test_both_layouts_open_through_the_protocol(tmp_path):
    ds = _small()
    ds.write(tmp_path / "s.zarr")
    ds.write(tmp_path / "r.icechunk", format="icechunk", message="m")
    assert guess_reader(tmp_path / "s.zarr").name == "spatialdata"
    assert guess_reader(tmp_path / "r.icechunk").name == "icechunk"
    for url, name in ((tmp_path / "s.zarr", "spatialdata"), (tmp_path / "r.icechunk", "icechunk")):
        for reader in (None, name):
            got = sf.read(url, reader=reader).points["pts"].data.compute()
            assert got["x"].tolist() == list(np.arange(10.0)), (url, reader)
            assert got["gene"].astype(str).tolist() == list("ababababab")
    # options go to the reader that understands them
    assert len(sf.read(tmp_path / "r.icechunk", branch="main")) == 1
    with pytest.raises(sf.FormatError, match="apply to Icechunk repositories only"):
        sf.read(tmp_path / "s.zarr", branch="dev")
    with pytest.raises(sf.FormatError, match="takes branch= and snapshot= only"):
        sf.read(tmp_path / "r.icechunk", colour="red")


def test_unknown_reader_name_lists_the_known_ones(tmp_path):
    with pytest.raises(sf.FormatError, match=r"no reader named 'nope'.*icechunk.*spatialdata"):
        sf.read(tmp_path, reader="nope")


def test_unreadable_url_lists_every_reader_tried(tmp_path):
    (tmp_path / "junk.txt").write_text("hello")
    with pytest.raises(sf.FormatError) as err:
        sf.read(tmp_path)
    msg = str(err.value)
    assert str(tmp_path) in msg
    for name in BUILTIN_READERS:
        assert name in msg


PLUGIN = """
from spatialflow.dataset import Dataset
from spatialflow.elements.points import Points
from spatialflow.io.location import location
from spatialflow.io.readers.base import Reader


class HelloReader(Reader):
    name = "hello"
    description = "a folder with a hello.txt of comma-separated x values"

    def guess_can_open(self, url, *, storage_options=None):
        return location(url, storage_options).exists("hello.txt")

    def open(self, url, *, storage_options=None, scale=1.0):
        import dask.dataframe as dd
        import pandas as pd

        with open(location(url).join("hello.txt")) as f:
            xs = [float(v) * scale for v in f.read().split(",")]
        df = pd.DataFrame({"x": xs, "y": [0.0] * len(xs)})
        return Dataset(points={"hello": Points(dd.from_pandas(df, npartitions=1))})
"""


@pytest.fixture
def hello_plugin(tmp_path, monkeypatch):
    """A third-party reader installed the way a package installs one: a module plus a
    dist-info with an entry point in the ``spatialflow.readers`` group, found on sys.path."""
    site = tmp_path / "site"
    site.mkdir()
    _install_hello(site)
    monkeypatch.syspath_prepend(str(site))
    yield site
    sys.modules.pop("hello_reader", None)


def _install_hello(site: Path) -> None:
    (site / "hello_reader.py").write_text(textwrap.dedent(PLUGIN))
    info = site / "hello_reader-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: hello-reader\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[spatialflow.readers]\nhello = hello_reader:HelloReader\n"
    )


def test_a_plugin_installed_after_a_lookup_is_found(tmp_path, monkeypatch):
    """The plug-ins are remembered between reads, but a package installed into a folder of
    the import path since (as pip does in a running notebook) is found on the next read."""
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    assert "hello" not in reader_names()
    _install_hello(site)
    try:
        assert "hello" in reader_names()
    finally:
        sys.modules.pop("hello_reader", None)


def test_an_entry_point_reader_is_picked_up(tmp_path, hello_plugin):
    assert reader_names()[: len(BUILTIN_READERS)] == list(BUILTIN_READERS)  # built-ins first
    assert "hello" in reader_names()
    folder = tmp_path / "sample"
    folder.mkdir()
    (folder / "hello.txt").write_text("1,2,3")
    guessed = sf.read(folder)
    assert guessed.points["hello"].data.compute()["x"].tolist() == [1.0, 2.0, 3.0]
    named = sf.read(folder, reader="hello", scale=10.0)
    assert named.points["hello"].data.compute()["x"].tolist() == [10.0, 20.0, 30.0]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(sf.FormatError, match=r"hello \(a folder with a hello.txt"):
        sf.read(empty)


def test_a_broken_plugin_does_not_break_reading(tmp_path, hello_plugin, caplog):
    (hello_plugin / "hello_reader.py").write_text("raise ImportError('broken plug-in')\n")
    sys.modules.pop("hello_reader", None)
    ds = _small()
    ds.write(tmp_path / "s.zarr")
    assert "pts" in sf.read(tmp_path / "s.zarr").points
    assert "hello" not in reader_names()
    assert any("failed to load" in r.message for r in caplog.records)


def test_missing_path_says_so(tmp_path):
    with pytest.raises(sf.FormatError, match="no such directory"):
        sf.read(Path(tmp_path) / "missing")
