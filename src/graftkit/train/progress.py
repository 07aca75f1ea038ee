"""Live progress for long work (rich): a bar per epoch or extraction with loss, throughput, ETA;
and where the time went (``Reporter.phase``: exclusive seconds per named phase)."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True)


class Reporter:
    """What the loop tells the user. ``quiet=True`` keeps only warnings."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self._progress: Progress | None = None
        self._task: Any = None
        self._seconds: dict[str, float] = {}
        self._stack: list[list[Any]] = []  # [name, seconds spent in phases inside it]

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Count the time inside the block to ``name``, less the time of phases nested in it
        (feature extraction inside training counts as feature extraction)."""
        frame: list[Any] = [name, 0.0]
        self._stack.append(frame)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - t0
            self._stack.pop()
            self._seconds[name] = self._seconds.get(name, 0.0) + elapsed - frame[1]
            if self._stack:
                self._stack[-1][1] += elapsed

    def add_time(self, name: str, seconds: float) -> None:
        self._seconds[name] = self._seconds.get(name, 0.0) + seconds

    def timings(self) -> dict[str, float]:
        """Seconds per phase, in the order the phases first ran."""
        return {k: round(v, 3) for k, v in self._seconds.items()}

    def start(self, description: str, total: int) -> None:
        if self.quiet or not console.is_terminal:  # no live bars in logs
            return
        self._progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"), TextColumn("{task.fields[speed]}"),
            TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
            console=console, transient=True,
        )
        self._progress.start()
        self._task = self._progress.add_task(description, total=total, info="", speed="")

    def advance(self, n: int = 1, info: str = "", speed: float | None = None) -> None:
        if self._progress is not None:
            sp = f"{speed:.0f} img/s" if speed else ""
            self._progress.update(self._task, advance=n, info=info, speed=sp)

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def line(self, text: str) -> None:
        if not self.quiet:
            console.print(text, highlight=False)

    def warn(self, text: str) -> None:
        console.print(f"[yellow]warning:[/] {text}", highlight=False)


def process_age() -> float | None:
    """Seconds since this process started (Linux: /proc), or None where it cannot be read:
    the start-up a run's timing breakdown reports (the interpreter, imports, the config)."""
    try:
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            up = float(f.read().split()[0])  # seconds since boot, as the start time counts
        return max(0.0, up - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None
