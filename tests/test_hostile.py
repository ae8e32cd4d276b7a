"""The hostile-input corpus (tests/hostile_corpus.py): every case gives its named
SpatialFlowError with a message naming the path at fault, writes nothing outside its target
(reads write nothing at all), and neither hangs nor eats memory."""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from hostile_corpus import CASES, Case, fill, read_all

import spatialflow as sf

TIMEOUT_S = 60  # per case; the slowest legitimate case takes a few seconds
MEMORY_BUDGET = 600 * 2**20  # RSS growth allowed while a case runs


@pytest.fixture(scope="session")
def base_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small valid SpatialData store holding every kind (read-only for the cases)."""
    path = tmp_path_factory.mktemp("hostile-base") / "base.zarr"
    sf.datasets.xenium_like(3000, 30, n_genes=12, seed=1).write(path)
    read_all(path)  # valid as written
    return path


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = Path(dirpath, n)
            st = p.lstat()
            out[str(p.relative_to(root))] = (st.st_size if p.is_file() else 0, st.st_mtime_ns)
    return out


class _Watch:
    """Peak RSS growth of this process, sampled in a thread, while a case runs."""

    def __init__(self) -> None:
        self.proc = psutil.Process()
        self.base = self.proc.memory_info().rss
        self.peak = self.base
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self.stop.wait(0.02):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def __enter__(self) -> _Watch:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


class _Timeout(BaseException):
    pass


@pytest.fixture
def deadline() -> Iterator[None]:
    def boom(*_: object) -> None:
        raise _Timeout(f"case did not finish within {TIMEOUT_S} s")

    old = signal.signal(signal.SIGALRM, boom)
    signal.setitimer(signal.ITIMER_REAL, TIMEOUT_S)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def test_the_corpus_is_large_and_unique() -> None:
    ids = [c.id for c in CASES]
    assert len(ids) >= 60, len(ids)
    assert len(set(ids)) == len(ids), [i for i in ids if ids.count(i) > 1]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_input(case: Case, base_store: Path, tmp_path: Path, monkeypatch, deadline):
    sandbox = tmp_path / "sandbox"
    sandbox.mkdir()
    monkeypatch.chdir(sandbox)  # a relative path that escapes would land here
    base_before = _tree(base_store)
    target = case.build(sandbox, base_store)
    existed = target.exists()
    before = _tree(tmp_path)
    t0 = time.perf_counter()
    with _Watch() as watch, pytest.raises(sf.SpatialFlowError) as info:
        case.act(target)
    seconds = time.perf_counter() - t0
    err = info.value
    assert isinstance(err, case.error), f"{type(err).__name__} is not {case.error.__name__}: {err}"
    msg = str(err)
    assert re.search(fill(case.match, target), msg, re.S), f"{case.match!r} not in {msg!r}"
    assert "\n" not in msg.strip() or len(msg) < 2000, "a message, not a dump"
    assert watch.peak - watch.base < MEMORY_BUDGET, f"RSS grew {(watch.peak - watch.base) >> 20} MB"
    assert seconds < TIMEOUT_S
    # nothing outside the target changed; a read changed nothing at all
    after = _tree(tmp_path)
    rel = str(target.relative_to(tmp_path))
    reading = not case.id.startswith("write-")
    outside = {
        k: v for k, v in after.items() if reading or not (k == rel or k.startswith(rel + os.sep))
    }
    expected = {
        k: v for k, v in before.items() if reading or not (k == rel or k.startswith(rel + os.sep))
    }
    assert outside == expected, sorted(set(outside) ^ set(expected))
    if not existed:  # a failed write to a new place leaves nothing there
        assert not target.exists() or target.is_file()
    assert _tree(base_store) == base_before
