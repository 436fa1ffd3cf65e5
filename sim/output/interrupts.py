"""SIGINT (Ctrl-C) and SIGTERM handled alike by every command.

`Interrupts` installs handlers for both for the length of a command. A signal raises ``KeyboardInterrupt``
(SIGINT) or its subclass `Terminated` (SIGTERM) in the main thread, so every ``except KeyboardInterrupt``
-- the simulation keeping its partial result, a sweep keeping what is done -- handles both the same way;
the exit code tells them apart: 128 + the signal number (130 for SIGINT, 143 for SIGTERM), the first
signal's. While files are written (`deferred`), a signal does not interrupt: the first one says the
writing finishes first, a further one stops it (the folder keeps its ``INCOMPLETE`` marker, see
`sim.output.files`).
"""

from __future__ import annotations

import signal
import sys
from contextlib import contextmanager
from typing import Any, Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C's KeyboardInterrupt."""


class Interrupts:
    """Handlers for SIGINT and SIGTERM while the ``with`` block runs (the previous ones come back after)."""

    def __init__(self) -> None:
        self.signum: int | None = None  # the first signal received
        self._old: dict[int, Any] = {}
        self._deferring = False
        self._deferred = 0
        self._note = ""

    def __enter__(self) -> "Interrupts":
        for s in SIGNALS:
            if s == signal.SIGINT and signal.getsignal(s) == signal.SIG_IGN:
                continue  # started with Ctrl-C ignored (a background job of a script, nohup): keep it so
            self._old[s] = signal.signal(s, self._on_signal)
        return self

    def __exit__(self, *exc: object) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)

    @property
    def code(self) -> int:
        """The exit code: 128 + the first signal's number (130 Ctrl-C, 143 SIGTERM)."""
        return 128 + (self.signum or signal.SIGINT)

    @property
    def word(self) -> str:
        """How the message names it: ``interrupted`` (Ctrl-C) or ``terminated`` (SIGTERM)."""
        return "terminated" if self.signum == signal.SIGTERM else "interrupted"

    def received(self, e: BaseException) -> None:
        """Note a KeyboardInterrupt that did not come through the handler (e.g. raised before it was set)."""
        if self.signum is None:
            self.signum = signal.SIGTERM if isinstance(e, Terminated) else signal.SIGINT

    def _on_signal(self, signum: int, frame: object) -> None:
        if self.signum is None:
            self.signum = signum
        if self._deferring:
            self._deferred += 1
            if self._deferred == 1:
                try:
                    print(self._note, file=sys.stderr, flush=True)
                except RuntimeError:  # stderr busy in the main thread (re-entrant write): skip the note
                    pass
                return
        raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()

    @contextmanager
    def deferred(self, note: str) -> Iterator[None]:
        """Finish the block first: the first signal inside it prints ``note`` and is remembered (the command
        still ends with its exit code); a second one interrupts the block."""
        self._deferring, self._deferred, self._note = True, 0, note
        try:
            yield
        finally:
            self._deferring = False

    @property
    def pending(self) -> bool:
        """A signal arrived during a `deferred` block (the command should stop after it)."""
        return self._deferred > 0
