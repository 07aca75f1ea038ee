"""Live progress for long work (rich): a bar per epoch or extraction with loss, throughput, ETA."""

from __future__ import annotations

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
