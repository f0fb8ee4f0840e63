"""Progress that tells the truth: labelled phases, rates and ETAs measured after compilation.

Messages go through :mod:`logging` (logger ``"ibjax"``), so code that embeds ibjax silences them
with ``logging.getLogger("ibjax").setLevel(logging.WARNING)`` or ``run_study(..., progress=False)``.

A :class:`Progress` counts the units of one phase (training steps of an epoch, estimator epochs,
...). On a terminal it draws a tqdm bar on stderr; otherwise (a log file, a pipe, CI) it writes a
plain log line at most every ``interval`` seconds and one when the phase ends, so redraws never pile
up on one line. The first unit of a phase usually includes compiling the jitted step: it is shown as
"compiling" and left out of the rate, so the ETA comes from post-compile units only.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Optional

__all__ = ["LOGGER", "Progress", "phase"]

LOGGER = logging.getLogger("ibjax")


def _interactive(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class Progress:
    """Progress of one phase: ``update(done)`` after each unit, ``close()`` at the end.

    Args:
      desc: the phase's label, e.g. "epoch 3/120 train".
      total: units in the phase.
      unit: what a unit is ("step", "epoch").
      enabled: False makes it silent (nothing drawn or logged).
      interval: seconds between plain log lines when stderr is not a terminal.
      first_is_compile: the first unit includes compilation: excluded from the rate and ETA.
    """

    def __init__(self, desc: str, total: int, unit: str = "step", *, enabled: bool = True, interval: float = 30.0,
                 first_is_compile: bool = True, stream=None):
        self.desc, self.total, self.unit = desc, max(int(total), 0), unit
        self.enabled = enabled and LOGGER.isEnabledFor(logging.INFO)
        self.interval, self.first_is_compile = interval, first_is_compile
        self.stream = stream or sys.stderr
        self.done = 0
        self.start = time.perf_counter()
        self.rate_start: Optional[float] = None if first_is_compile else self.start
        self.rate_from = 1 if first_is_compile else 0
        self._last_log = self.start
        self._bar = None
        self._tty = _interactive(self.stream)
        if self.enabled and first_is_compile and self.total:
            LOGGER.debug("%s: compiling and running the first %s", desc, unit)

    # The rate counts units after the first one when it includes compilation.
    def rate(self) -> Optional[float]:
        if self.rate_start is None:
            return None
        elapsed = time.perf_counter() - self.rate_start
        n = self.done - self.rate_from
        return n / elapsed if elapsed > 0 and n > 0 else None

    def eta(self) -> Optional[float]:
        r = self.rate()
        return (self.total - self.done) / r if r else None

    def update(self, done: Optional[int] = None) -> None:
        """Record progress: ``done`` units so far (default: one more)."""
        self.done = self.done + 1 if done is None else int(done)
        if self.rate_start is None and self.done >= 1:
            self.rate_start = time.perf_counter()
            compile_s = self.rate_start - self.start
            if self.enabled and self.first_is_compile:
                LOGGER.debug("%s: first %s (compile included) took %.1f s", self.desc, self.unit, compile_s)
        if not self.enabled:
            return
        if self._tty:
            self._draw()
        elif time.perf_counter() - self._last_log >= self.interval and self.done < self.total:
            self._last_log = time.perf_counter()
            LOGGER.info("%s", self.line())
        if self.done >= self.total:
            self.close()

    def __call__(self, done: Optional[int] = None, total: Optional[int] = None) -> None:
        """``(done, total)`` callback form of :meth:`update`, as the library's loops call it."""
        self.update(done)

    def _draw(self) -> None:
        if self._bar is None:
            from tqdm import tqdm

            # Created after the first (compiling) unit, with it as ``initial``: tqdm's rate is
            # (n - initial) / elapsed, i.e. post-compile units only.
            self._bar = tqdm(total=self.total, initial=self.done, desc=self.desc, unit=self.unit, file=self.stream,
                             leave=False, dynamic_ncols=True)
            return
        self._bar.update(self.done - self._bar.n)

    def line(self) -> str:
        """A plain status line: units, elapsed, rate and ETA after compilation."""
        elapsed = time.perf_counter() - self.start
        parts = [f"{self.desc}: {self.done}/{self.total} {self.unit}s", f"{elapsed:.1f} s"]
        r = self.rate()
        if r:
            parts.append(f"{r:.3g} {self.unit}s/s")
            if self.done < self.total:
                parts.append(f"ETA {self.eta():.0f} s")
        elif self.first_is_compile and self.done <= 1 and self.done < self.total:
            parts.append("compiling")
        return ", ".join(parts)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self.enabled and self.total and not getattr(self, "_closed", False):
            self._closed = True
            LOGGER.debug("%s", self.line())


class phase:
    """Context manager that logs a labelled phase and its duration: ``with phase("loading data"): ...``."""

    def __init__(self, label: str, enabled: bool = True):
        self.label, self.enabled = label, enabled

    def __enter__(self) -> "phase":
        self.start = time.perf_counter()
        if self.enabled:
            LOGGER.info("%s ...", self.label)
        return self

    def __exit__(self, exc_type, *_) -> None:
        self.seconds = time.perf_counter() - self.start
        if self.enabled and exc_type is None:
            LOGGER.info("%s: done in %.1f s", self.label, self.seconds)
