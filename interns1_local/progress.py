"""A rich progress display for long work (conversion): tensors done, bytes, MB/s, time left."""

from __future__ import annotations

from pathlib import Path
from types import TracebackType

from rich.console import Console
from rich.progress import (BarColumn, DownloadColumn, Progress, TaskID, TextColumn,
                           TimeRemainingColumn, TransferSpeedColumn)


class RichProgress:
    """Implements ``converters.gguf_out.Progress`` with one bar per output file."""

    def __init__(self, console: Console) -> None:
        self._progress = Progress(
            TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
            TextColumn("{task.fields[tensors]}"), TimeRemainingColumn(), console=console, transient=False,
        )
        self._task: TaskID | None = None
        self._done = 0
        self._total = 0

    def __enter__(self) -> RichProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc: tuple[type[BaseException] | None, BaseException | None, TracebackType | None]) -> None:
        self._progress.stop()

    def start_file(self, path: Path, n_tensors: int, total_bytes: int) -> None:
        self._done, self._total = 0, n_tensors
        name = path.name.removeprefix(".").removesuffix(".partial")
        self._task = self._progress.add_task(name, total=total_bytes, tensors=f"0/{n_tensors} tensors")

    def advance(self, nbytes: int) -> None:
        if self._task is not None:
            self._progress.advance(self._task, nbytes)

    def tensor_done(self, name: str) -> None:
        self._done += 1
        if self._task is not None:
            self._progress.update(self._task, tensors=f"{self._done}/{self._total} tensors")
