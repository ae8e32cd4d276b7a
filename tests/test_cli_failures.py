"""Every CLI command answers a failure the user can cause with one clear line and a non-zero
exit: destinations that cannot be created, a full disk, interrupted writes (Ctrl-C), and
nothing half-written behind."""

from __future__ import annotations

import resource
import signal
from pathlib import Path

import icechunk
import numpy as np
import pandas as pd
import pytest

import spatialflow as sf
from spatialflow import cli
from spatialflow.errors import StorageError


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cli-src") / "src.zarr"
    rng = np.random.default_rng(0)
    sf.Dataset(
        images={"img": sf.Image(rng.integers(0, 255, (1, 256, 256), dtype=np.uint8))},
        points={"p": sf.Points(pd.DataFrame({"x": rng.random(500), "y": rng.random(500)}))},
    ).write(path)
    return path


def _one_line_error(capsys, code: int, rc: int, *fragments: str) -> str:
    full = capsys.readouterr().err
    lines = [ln for ln in full.splitlines() if ln.strip() and "% Completed" not in ln]
    err = "\n".join(lines)  # (the progress bar on stderr is not an error)
    assert rc == code, full
    assert "Traceback" not in full and len(lines) == 1, full
    for f in fragments:
        assert f in err, (f, err)
    return err


@pytest.mark.parametrize("fmt", ["spatialdata", "icechunk"])
@pytest.mark.parametrize("dst", ["/proc/spatialflow-x.zarr", "/dev/null/x.zarr", "FILE/x.zarr"])
def test_convert_to_a_destination_that_cannot_be_created(src, tmp_path, capsys, dst, fmt):
    (tmp_path / "FILE").write_text("a file")
    dst = dst.replace("FILE", str(tmp_path / "FILE"))
    rc = cli.main(["convert", str(src), dst, "--format", fmt])
    _one_line_error(capsys, 2, rc, "StorageError", dst)
    assert not Path(dst).exists()


@pytest.fixture
def small_files():
    """A file-size limit of 64 kB for this process (writes beyond fail with EFBIG, as on a
    full disk; SIGXFSZ ignored so the write returns the error instead of killing us)."""
    old_sig = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    old = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, old[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old)
        signal.signal(signal.SIGXFSZ, old_sig)


def test_a_full_destination_is_one_line_and_leaves_nothing(tmp_path, capsys, small_files):
    rng = np.random.default_rng(1)
    big = sf.Image(rng.integers(0, 255, (1, 1024, 1024), dtype=np.uint8), chunks=(1, 1024, 1024))
    ds = sf.Dataset(images={"big": big})
    with pytest.raises(StorageError, match=r"exceed|space") as info:
        ds.write(tmp_path / "out.zarr")
    assert str(tmp_path / "out.zarr") in str(info.value)
    assert not (tmp_path / "out.zarr").exists()  # a new store that failed is removed whole
    with pytest.raises(StorageError, match=r"nothing was committed"):
        ds.write(tmp_path / "out.icechunk", format="icechunk")
    # the repository was created, but holds no commit beyond its initial one
    storage = icechunk.local_filesystem_storage(str(tmp_path / "out.icechunk"))
    repo = icechunk.Repository.open(storage)
    assert len(list(repo.ancestry(branch="main"))) == 1, "a failed write committed something"


def test_ctrl_c_during_convert_leaves_nothing(src, tmp_path, capsys, monkeypatch):
    """KeyboardInterrupt after part of the output exists: exit 130, one line, no output."""
    from spatialflow.io import sdwriter

    real = sdwriter._write_points

    def interrupted(*args, **kwargs):
        real(*args, **kwargs)  # the points are written...
        raise KeyboardInterrupt  # ...then the user presses Ctrl-C

    monkeypatch.setattr(sdwriter, "_write_points", interrupted)
    dst = tmp_path / "out.zarr"
    rc = cli.main(["convert", str(src), str(dst)])
    _one_line_error(capsys, 130, rc, "interrupted")
    assert not dst.exists()


def test_ctrl_c_before_a_commit_commits_nothing(src, tmp_path, capsys, monkeypatch):
    from spatialflow.io import icechunk_writer

    dst = tmp_path / "out.icechunk"
    assert cli.main(["convert", str(src), str(dst), "--format", "icechunk"]) == 0
    capsys.readouterr()
    storage = icechunk.local_filesystem_storage(str(dst))
    head = icechunk.Repository.open(storage).lookup_branch("main")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # every chunk is written, the commit is next

    monkeypatch.setattr(icechunk_writer, "_record_partitions", interrupted)
    rc = cli.main(["convert", str(src), str(dst), "--format", "icechunk"])
    _one_line_error(capsys, 130, rc, "interrupted")
    assert icechunk.Repository.open(storage).lookup_branch("main") == head


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["info", "/proc/nothing-here"], "no such directory"),
        (["log", "/proc/nothing-here"], "/proc/nothing-here"),
        (["rollback", "/proc/nothing-here", "--to", "x"], "/proc/nothing-here"),
        (["run", "/proc/nothing.yaml"], "cannot read the config file"),
        (["convert", "/proc/nothing-here", "out.zarr"], "no such directory"),
    ],
)
def test_missing_inputs_are_one_line(argv, fragment, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc = cli.main(argv)
    _one_line_error(capsys, 2, rc, fragment)
    assert list(tmp_path.iterdir()) == []
