"""Progress of long steps: tasks done / total and time left, for people watching.

Decisions:

* Library code never prints: functions that run long steps (``run_job``, ``run_demo``) take an
  optional ``step`` callback, ``step(description) -> context manager``, and wrap each long step
  in it. Without one they only log. The command line (and a notebook) passes
  :meth:`StepProgress.step`.
* Task counts come from where the tasks run. On a distributed cluster a small scheduler plugin
  (:class:`TaskCounter`) counts tasks as graphs arrive and as they finish (cumulative, so tasks
  that are released after finishing still count as done); it is polled from a thread. Without a
  cluster, a ``dask.callbacks.Callback`` counts tasks of the local scheduler. A step shows the
  tasks submitted and finished since it began.
* Rendering: a rich progress bar (description, bar, done/total tasks, elapsed, time left) when
  the console is a terminal or a Jupyter notebook (rich renders live there too); otherwise one
  line per step when it ends (``<step>: N tasks in S s``), so logs and CI stay readable.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

from distributed.diagnostics.plugin import SchedulerPlugin

__all__ = ["StepProgress", "TaskCounter", "no_progress"]

log = logging.getLogger(__name__)

PLUGIN_NAME = "spatialflow-progress"


class TaskCounter(SchedulerPlugin):
    """On the scheduler: tasks submitted and tasks finished (cumulative)."""

    name = PLUGIN_NAME

    def __init__(self) -> None:
        self.added = 0
        self.done = 0
        self.erred = 0

    def update_graph(self, scheduler: Any, *, tasks: Any = None, **kwargs: Any) -> None:
        self.added += len(tasks or ())

    def transition(self, key: Any, start: str, finish: str, *args: Any, **kwargs: Any) -> None:
        if finish == "memory" and start == "processing":
            self.done += 1
        elif finish == "erred":
            self.erred += 1


def _counts_on_scheduler(dask_scheduler: Any = None) -> tuple[int, int]:
    plugin = dask_scheduler.plugins.get(PLUGIN_NAME)
    if plugin is None:
        return 0, 0
    return plugin.added, plugin.done


class _LocalCounter:
    """Tasks of Dask's local schedulers (threads, processes, sync), through callbacks."""

    def __init__(self) -> None:
        from dask.callbacks import Callback

        outer = self
        self.base_total = self.base_done = 0
        self._state: dict[str, Any] | None = None

        class _CB(Callback):
            def _start_state(self, dsk: Any, state: dict[str, Any]) -> None:
                outer._state = state

            def _finish(self, dsk: Any, state: dict[str, Any], errored: bool) -> None:
                total, done = outer._live(state)
                outer.base_total += total
                outer.base_done += done
                outer._state = None

        self.callback = _CB()

    @staticmethod
    def _live(state: dict[str, Any]) -> tuple[int, int]:
        done = len(state.get("finished", ()))
        pending = sum(len(state.get(k, ())) for k in ("ready", "waiting", "running"))
        return done + pending, done

    def counts(self) -> tuple[int, int]:
        total, done = self.base_total, self.base_done
        state = self._state
        if state is not None:
            with contextlib.suppress(RuntimeError):  # the state changes while we read it
                t, d = self._live(state)
                total, done = total + t, done + d
        return total, done


@contextlib.contextmanager
def no_progress(description: str) -> Iterator[None]:
    """The default ``step``: log the step and its time, show nothing."""
    t0 = time.perf_counter()
    log.info("%s ...", description)
    yield
    log.info("%s: done in %.1f s", description, time.perf_counter() - t0)


class StepProgress:
    """Progress bars (or one line per step) on a rich console; see the module doc."""

    def __init__(self, console: Any = None, *, live: bool | None = None, interval: float = 0.25):
        from rich.console import Console

        self.console = console if console is not None else Console()
        self.live = (
            live if live is not None else (self.console.is_terminal or self.console.is_jupyter)
        )
        self.interval = interval
        self.client: Any = None

    def set_client(self, client: Any) -> None:
        """Count tasks on this distributed client's scheduler from now on."""
        try:
            client.register_plugin(TaskCounter(), name=PLUGIN_NAME)
        except Exception as e:  # an old or locked-down scheduler: fall back to no counts
            log.warning("progress: cannot install the task counter on the scheduler (%s)", e)
            return
        self.client = client

    def _distributed_counts(self) -> tuple[int, int]:
        try:
            return tuple(self.client.run_on_scheduler(_counts_on_scheduler))  # type: ignore[return-value]
        except Exception:
            return 0, 0

    @contextlib.contextmanager
    def step(self, description: str) -> Iterator[None]:
        """Show the progress of the tasks that run inside the block."""
        local = _LocalCounter()
        if self.client is not None:
            base = self._distributed_counts()

            def counts() -> tuple[int, int]:
                total, done = self._distributed_counts()
                return total - base[0], done - base[1]
        else:
            counts = local.counts
        t0 = time.perf_counter()
        stop = threading.Event()
        with local.callback, self._renderer(description) as update:
            poller = threading.Thread(
                target=self._poll, args=(counts, update, stop), daemon=True, name="progress"
            )
            poller.start()
            try:
                yield
            finally:
                stop.set()
                poller.join()
                total, done = counts()
                update(total, done, final=True)
        if not self.live:
            self.console.print(
                f"{description}: {done} of {total} tasks in {time.perf_counter() - t0:.1f} s",
                markup=False,
                highlight=False,
            )

    def _poll(self, counts: Any, update: Any, stop: threading.Event) -> None:
        while not stop.wait(self.interval):
            total, done = counts()
            update(total, done)

    @contextlib.contextmanager
    def _renderer(self, description: str) -> Iterator[Any]:
        if not self.live:
            yield lambda total, done, final=False: None
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("tasks"),
            TimeElapsedColumn(),
            TextColumn("left"),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
            refresh_per_second=8,
        )
        with bar:
            task = bar.add_task(description, total=None)

            def update(total: int, done: int, final: bool = False) -> None:
                if final and total:
                    done = total if done >= total else done
                bar.update(task, total=max(total, 1) if total else None, completed=done)

            yield update
