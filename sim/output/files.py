"""Safe output: folder names made from user input, output folders prepared and checked before any work, and
files written whole or not at all.

- `safe_name`: a scenario's or plan's ``name`` becomes one folder name (no ``/``, no ``..``), so a default
  output folder stays under ``reports/``.
- `prepare_out_dir`: refuses a non-empty folder unless forced (`OutputExists`), creates the folder and
  proves it writable (`OutputError`) -- before a simulation, so a bad ``--out`` costs no work.
- `out_dir_refused`: what a command prints and returns when `prepare_out_dir` refuses its ``--out``.
- `write_atomic`: each file goes to a temporary name in the same folder and is renamed over the target
  only when complete; an interrupted or failed write leaves no truncated file, and the error names the file.
- `IncompleteMarker`: an ``INCOMPLETE`` file that exists while a folder is being written and stays, saying
  what is missing and why, if the writing stops early.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Callable, Iterable

from sim.config.errors import one_line

_UNSAFE = re.compile(r"[^\w.-]+")
MARKER = "INCOMPLETE"


class OutputError(OSError):
    """An output folder or file that cannot be written; the message names it and says why (exit 1)."""

    def __init__(self, msg: str) -> None:
        super().__init__(one_line(msg))


class OutputExists(ValueError):
    """An output folder that already holds files (exit 2: use --force, or another folder)."""

    def __init__(self, msg: str) -> None:
        super().__init__(one_line(msg))


FORCE_HINT = "use --force to replace its files, or another --out"


def out_dir_refused(e: OutputError | OutputExists, hint: str = FORCE_HINT) -> int:
    """Print to stderr why ``--out`` cannot be used and return the command's exit status: 2 for a folder
    holding earlier results (with ``hint``: how to proceed), 1 for one that cannot be written."""
    if isinstance(e, OutputExists):
        print(f"{e}; {hint}", file=sys.stderr)
        return 2
    print(str(e), file=sys.stderr)
    return 1


def safe_name(name: str, default: str = "run", max_length: int = 80) -> str:
    """``name`` as a single folder name: runs of characters other than letters, digits, ``.``, ``_`` and
    ``-`` become ``_``, leading dots go (no ``..``, no hidden folder), at most ``max_length`` characters."""
    return _UNSAFE.sub("_", name).lstrip("._-")[:max_length].rstrip("_") or default


def _why(e: OSError) -> str:
    return e.strerror or type(e).__name__


def prepare_out_dir(out: Path, force: bool = False, allow: Iterable[str] = ()) -> bool:
    """Make ``out`` ready to receive files: refuse one that holds files other than ``allow`` unless ``force``
    (`OutputExists`), create it, and write and remove a probe file (`OutputError` if any step fails).
    Returns True if this call created the folder (a caller that then writes nothing may remove it)."""
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out}: exists and is not a folder")
    created = not out.exists()
    if not created and not force:
        try:
            held = sorted(p.name for p in out.iterdir() if p.name not in set(allow))
        except OSError as e:
            raise OutputError(f"{out}: cannot read the output folder: {_why(e)}") from None
        if held:
            shown = ", ".join(held[:4]) + (f" and {len(held) - 4} more" if len(held) > 4 else "")
            raise OutputExists(f"{out}: output folder is not empty ({shown})")
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".memslo-probe-", dir=out)
        try:
            os.write(fd, b"ok")
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as e:
        raise OutputError(f"{out}: cannot write the output folder: {_why(e)}") from None
    return created


def remove_if_empty(out: Path) -> None:
    """Remove a folder this command created if nothing was written into it."""
    try:
        out.rmdir()
    except OSError:
        pass


def write_atomic(path: Path, content: str | bytes | Callable[[Path], object]) -> None:
    """Write ``path`` whole or not at all: ``content`` (text, bytes, or a function that writes the file it is
    given) goes to a temporary file beside ``path``, which is then renamed over it. On any failure or
    interruption the temporary file is removed and ``path`` keeps what it held before; an `OSError` becomes
    an `OutputError` naming ``path``."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        if callable(content):
            content(tmp)
        elif isinstance(content, bytes):
            tmp.write_bytes(content)
        else:
            tmp.write_text(content)
        os.replace(tmp, path)
    except BaseException as e:
        try:
            tmp.unlink()
        except OSError:
            pass
        if isinstance(e, OSError) and not isinstance(e, OutputError):
            raise OutputError(f"{path}: cannot write: {_why(e)}") from None
        raise


class IncompleteMarker:
    """``DIR/INCOMPLETE`` while a folder is being written: created first, removed by `done` after the last
    file; if writing stops early it stays, naming the files not written and why (`stopped`)."""

    def __init__(self, out: Path, files: Iterable[str]) -> None:
        self.path = out / MARKER
        self.pending = list(files)
        self._write("being written")

    def _write(self, state: str) -> None:
        try:
            self.path.write_text(f"This folder is incomplete ({state}). Files present are whole; not written: "
                                 f"{', '.join(self.pending) or 'none'}.\n")
        except OSError:  # e.g. the disk is full: the error that stopped us is reported anyway
            pass

    def wrote(self, name: str) -> None:
        if name in self.pending:
            self.pending.remove(name)

    def stopped(self, why: str) -> None:
        self._write(why)

    def done(self) -> None:
        try:
            self.path.unlink()
        except OSError:
            pass
