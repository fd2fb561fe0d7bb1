"""Progress for people and for cron: a rich bar on a terminal, plain log lines otherwise."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class Reporter:
    """Receives run events; chooses its style from whether ``stream`` is a terminal."""

    def __init__(self, stream: TextIO | None = None, interactive: bool | None = None, log_every_s: float = 30.0,
                 quiet: bool = False):
        self.stream = stream or sys.stderr
        self.console = Console(file=self.stream, highlight=False, soft_wrap=True)
        self.interactive = self.console.is_terminal if interactive is None else interactive
        self.log_every_s, self.quiet = log_every_s, quiet
        self._bar: Progress | None = None
        self._task = None
        self._total: int | None = None
        self._done = 0
        self._start = self._last_log = 0.0

    def notice(self, message: str) -> None:
        if not self.quiet:
            self.console.print(f"catcap: {message}", markup=False)

    def start(self, total: int | None, already: int = 0, label: str = "") -> None:
        self._total, self._done = total, already
        self._start = self._last_log = time.monotonic()
        if self.quiet:
            return
        if self.interactive:
            self._bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[rate]} img/s"), TextColumn("{task.fields[errors]} errors"),
                                 TimeElapsedColumn(), TimeRemainingColumn(), console=self.console, transient=False)
            self._bar.start()
            self._task = self._bar.add_task(label or "captioning", total=total, completed=already, rate="-", errors=0)
        else:
            self.notice(f"captioning {label}: about {total if total is not None else '?'} rows"
                        + (f", resuming after {already}" if already else ""))

    def advance(self, rows: int, summary) -> None:
        self._done += rows
        elapsed = max(1e-9, time.monotonic() - self._start)
        rate = (self._done - summary.resumed_rows) / elapsed
        errors = sum(summary.errors.values())
        if self.quiet:
            return
        if self._bar is not None:
            self._bar.update(self._task, advance=rows, rate=f"{rate:.1f}", errors=errors)
        elif time.monotonic() - self._last_log >= self.log_every_s:
            self._last_log = time.monotonic()
            share = f" ({100 * self._done / self._total:.1f}%)" if self._total else ""
            eta = ""
            if self._total and rate > 0:
                eta = f", ETA {_duration((self._total - self._done) / rate)}"
            self.notice(f"{self._done}/{self._total if self._total is not None else '?'} rows{share}, "
                        f"{rate:.1f} img/s, {errors} errors{eta}")

    def finish(self, summary) -> None:
        if self._bar is not None:
            self._bar.stop()
        if self.quiet:
            return
        errors = ", ".join(f"{k} {v}" for k, v in sorted(summary.errors.items())) or "none"
        self.notice(f"done: {summary.rows} rows, {summary.ok} ok, errors: {errors}; "
                    f"{summary.images_per_s} images/s on {summary.provider} -> {summary.output}")


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"
