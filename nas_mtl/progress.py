"""Progress output that fits where it goes: a tqdm bar on a terminal, plain lines in a file or CI log.

The library prints nothing unless asked (``TrainConfig(progress=True)``, the CLI's default); then
:func:`progress` shows a bar when standard error is a terminal and otherwise one plain line when the
loop ends (and one every :data:`LINE_SECONDS` while it runs), so a redirected log holds no carriage
returns or bar redraws.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from time import monotonic
from typing import IO, Any, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")

LINE_SECONDS = 60.0
"""How often a long loop prints a plain line when the output is not a terminal."""


class PlainProgress(Iterable[T]):
    """Iterates ``iterable``, printing ``desc: N steps, S s[, postfix]`` periodically and at the end."""

    def __init__(self, iterable: Iterable[T], desc: str, total: int | None, stream: IO[str]) -> None:
        self.iterable, self.desc, self.total, self.stream = iterable, desc, total, stream
        self.postfix = ""

    def set_postfix(self, **values: Any) -> None:
        """Shown at the end of the next line (same call as tqdm's)."""
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def _line(self, n: int, seconds: float) -> None:
        steps = f"{n}/{self.total}" if self.total is not None else str(n)
        extra = f", {self.postfix}" if self.postfix else ""
        print(f"{self.desc}: {steps} steps, {seconds:.1f} s{extra}", file=self.stream, flush=True)

    def __iter__(self) -> Iterator[T]:
        start = last = monotonic()
        n = 0
        for item in self.iterable:
            yield item
            n += 1
            now = monotonic()
            if now - last >= LINE_SECONDS:
                self._line(n, now - start)
                last = now
        self._line(n, monotonic() - start)


def progress(
    iterable: Iterable[T], desc: str, enabled: bool, total: int | None = None, stream: IO[str] | None = None
) -> Iterable[T]:
    """``iterable`` with progress output: none when not ``enabled``, a bar on a terminal, else plain lines.

    The result has ``set_postfix(**values)`` in every case.
    """
    stream = sys.stderr if stream is None else stream
    if not enabled or stream.isatty():
        return tqdm(iterable, desc=desc, total=total, disable=not enabled, leave=False, file=stream)
    return PlainProgress(iterable, desc, total, stream)


__all__ = ["LINE_SECONDS", "PlainProgress", "progress"]
