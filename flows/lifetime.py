"""A stopped `mvg` command takes down what it started (README, "Reliability").

A command starts servers as child processes: Prefect's temporary API server, a local Ray (GCS,
raylet, dashboard, workers), Dask workers. Python's default SIGTERM ends the command at once,
with no `finally` and no atexit hook, so those children lived on (a temporary Prefect server per
kill). Here SIGTERM unwinds like Ctrl-C does: flows record their failure, and whatever the command
started is stopped by process id, its descendants only, never by name, so a second command on the
same machine, or the next run of this one, finds no stale server, lock or port.
"""

from __future__ import annotations

import atexit
import ctypes
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import psutil

GRACE_S = 5.0  # how long a child may take to stop on SIGTERM before it is killed
UNWIND_S = 30.0  # how long the command may take to unwind after a signal before it is cut short
KILL_SIGNALS = (signal.SIGTERM, signal.SIGINT)
PR_SET_CHILD_SUBREAPER = 36  # <linux/prctl.h>


@contextmanager
def children_stopped_if_killed(also_after_a_normal_end: bool = False) -> Iterator[None]:
    """Run the block; if SIGTERM or SIGINT ends it, every process this one started (and theirs)
    is stopped as the process exits, after Prefect's and Ray's own shutdown. Handlers are set in
    the main thread only (Python's rule) and restored after a normal end, so a command run inside
    a test leaves the test's own in place. `also_after_a_normal_end` is for the process that is
    the command: what is still running when it exits is stopped however the block ended (now and
    then a Ray actor process, its core worker shut down, hangs on after its raylet has gone)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    owner = os.getpid()
    adopting = _adopt_orphans(True)
    previous = {number: signal.signal(number, _unwind_on(owner)) for number in KILL_SIGNALS}
    # registered before Prefect and Ray register theirs, so it runs after them (last in, first
    # out): their own shutdown first, then whatever outlived it
    atexit.register(stop_descendants, owner)
    killed = False
    try:
        yield
    except (KeyboardInterrupt, SystemExit) as stopped:
        killed = True
        # once Ray has started, SIGTERM reaches Ray's own handler (a bare sys.exit), not ours, so the
        # deadline ours sets is set here, for the rest of the unwinding: Ray's and Prefect's shutdown
        _end_after(UNWIND_S, owner, signal.SIGINT if isinstance(stopped, KeyboardInterrupt) else signal.SIGTERM)
        raise
    finally:
        if not killed:  # a killed process keeps the handlers: a second signal must not skip the stop
            for number, handler in previous.items():
                signal.signal(number, handler)
            if not also_after_a_normal_end:
                atexit.unregister(stop_descendants)
                if adopting:
                    _adopt_orphans(False)


def _adopt_orphans(on: bool) -> bool:
    """Make this process (Linux) the new parent of any descendant whose own parent ends first, so
    the stop at exit still finds it among this process's descendants. Ray's shutdown stops the
    raylet before its dashboard and runtime-env agents notice: without this they were re-parented
    to init, out of reach, and lived on when the machine was too busy for them to see their
    parent go. Returns whether the setting took."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0) == 0
    except (OSError, AttributeError):  # no libc to call: descendants are found as before
        return False


def _unwind_on(owner: int):
    """The signal handler: the first signal unwinds (KeyboardInterrupt for SIGINT, SystemExit for
    SIGTERM) with a deadline, for an unwinding stuck in a server's shutdown; a second one, or the
    deadline, stops the children and ends the process at once. A forked child that inherited the
    handler just exits."""
    signalled = threading.Event()

    def handler(number: int, frame) -> None:
        if os.getpid() != owner:
            os._exit(128 + number)
        if signalled.is_set():  # asked twice (Ctrl-C again): no more waiting
            _end_now(owner, number, "asked again")
        signalled.set()
        _end_after(UNWIND_S, owner, number)
        if number == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(128 + number)

    return handler


def _end_after(seconds: float, owner: int, number: int) -> None:
    timer = threading.Timer(seconds, _end_now, (owner, number, f"still stopping {seconds:.0f} s later"))
    timer.daemon = True  # an unwinding that finishes in time exits without waiting for it
    timer.start()


def _end_now(owner: int, number: int, why: str) -> None:
    print(f"mvg: {signal.Signals(number).name}, {why}: stopping what it started and ending now", file=sys.stderr, flush=True)
    stop_descendants(owner)
    os._exit(128 + number)


def stop_descendants(pid: int, grace: float = GRACE_S) -> list[psutil.Process]:
    """SIGTERM every live descendant of `pid`, SIGKILL those still there after `grace` seconds;
    returns the processes found. Taken once: a server stopped here starts nothing new."""
    try:
        descendants = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    for process in descendants:
        _signal(process, signal.SIGTERM)
    _, alive = psutil.wait_procs(descendants, timeout=grace)
    for process in alive:
        _signal(process, signal.SIGKILL)
    psutil.wait_procs(alive, timeout=grace)
    return descendants


def _signal(process: psutil.Process, number: int) -> None:
    try:
        process.send_signal(number)
    except psutil.Error:  # gone already, or no longer ours
        pass
