"""One progress view for long work that reports ``(step, done, total)``: a bar per named step."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

__all__ = ["StepProgress", "step_progress"]

StepProgress = Callable[[str, int, int], None]


@contextmanager
def step_progress(console: Console, transient: bool = True) -> Iterator[StepProgress]:
    """Yield ``advance(step, done, total)``: the first call for a step adds its bar, later calls move it.

    Example:
        >>> with step_progress(Console()) as advance:  # doctest: +SKIP
        ...     advance("embedding crops", 10, 200)
    """
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=transient) as progress:
        tasks: dict[str, TaskID] = {}

        def advance(step: str, done: int, total: int) -> None:
            if step not in tasks:
                tasks[step] = progress.add_task(step, total=total)
            progress.update(tasks[step], completed=done, total=total)

        yield advance
