"""Writing beside a target, then renaming into place: a reader never sees a half-written model or artifact.

The staging path is named `.NAME.partial-PID-TOKEN` beside the target. It is removed when the block ends,
however it ends: an error, Ctrl-C, or SIGTERM (the CLI turns SIGTERM into `Terminated`, see
`sigterm_raises`). A process killed outright (SIGKILL, power loss) cannot clean up, so the next write to the
same target removes the staging paths of processes that no longer run.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import ProrankError

_TAG = ".partial-"


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C's KeyboardInterrupt so that every `finally` and `except BaseException` runs."""


def _raise_terminated(signum, frame):
    raise Terminated()


def sigterm_raises() -> None:
    """From now on SIGTERM raises Terminated in the main thread (the CLI calls this once at start-up)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_terminated)


def sigterm_exits(code: int) -> None:
    """Once the command has returned, SIGTERM ends the process at once with the command's exit status.

    There is nothing left to unwind by then, and a Terminated raised later lands in click's wrap-up (which turns
    it into "Aborted!" and exit 1: a finished batch job once failed CI that way) or in an atexit hook (a
    traceback after a clean run)."""

    def _exit(signum, frame):
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # a closed pipe or file: nothing more can reach it
                pass
        os._exit(code)

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _exit)


def make_parent(target: Path, what: str = "output") -> None:
    """Create target's folder, or raise one line naming the folder that cannot be made."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ProrankError(f"{target.parent}: cannot create the {what} folder ({exc.strerror or exc})") from None


def _owner_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale(target: Path) -> list[Path]:
    """Remove the staging paths of `target` left by processes that no longer run; returns what was removed."""
    removed = []
    prefix = f".{target.name}{_TAG}"
    try:
        siblings = list(target.parent.iterdir())
    except OSError:
        return removed
    for path in siblings:
        if not path.name.startswith(prefix):
            continue
        pid = path.name[len(prefix):].split("-", 1)[0].split(".", 1)[0]
        if pid.isdigit() and not _owner_alive(int(pid)):
            _remove(path)
            removed.append(path)
    return removed


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextmanager
def staged(target: Path, folder: bool = False, what: str = "output") -> Iterator[Path]:
    """A fresh staging file path (or an empty folder, with `folder`) beside `target`.

    The block writes it and renames it into place; whatever is left of it, and of any `STAGING.suffix`
    sibling the block made, is removed when the block ends.
    """
    target = Path(target)
    make_parent(target, what)
    remove_stale(target)
    path = target.with_name(f".{target.name}{_TAG}{os.getpid()}-{secrets.token_hex(4)}")
    if folder:
        path.mkdir()
    try:
        yield path
    finally:
        for leftover in [path, *path.parent.glob(path.name + ".*")]:
            _remove(leftover)
