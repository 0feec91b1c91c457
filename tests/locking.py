"""Test helper: a lock held by another process, released only when the test says so (no clock)."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
import threading
from typing import Callable, ContextManager


def hold_in_child(setup: str, lock_expression: str) -> subprocess.Popen:
    """A child that runs `setup`, enters `with <lock_expression>:`, prints "held" and waits for a
    line on stdin before letting go. Returns once it holds the lock."""
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(setup)
            + textwrap.dedent(f"""
        import sys
        with {lock_expression}:
            print("held", flush=True)
            sys.stdin.readline()
    """),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout.readline().strip() == "held"
    return child


def waits_then_gets(
    holder: subprocess.Popen, acquire: Callable[[], ContextManager], log_text: str
) -> tuple[bool, bool, bool]:
    """Enter `acquire()` in a thread while `holder` holds the lock. Returns (it logged `log_text`
    while waiting, it had not got the lock by then, it got the lock once the holder was told to
    release)."""
    waiting, got_it = threading.Event(), threading.Event()

    class Waiting(logging.Handler):
        def emit(self, record):
            if log_text in record.getMessage():
                waiting.set()

    logger = logging.getLogger("luna_core.catalog.connection")
    handler, level = Waiting(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)

    def second():
        with acquire():
            got_it.set()

    thread = threading.Thread(target=second)
    thread.start()
    try:
        logged = waiting.wait(60)
        blocked = not got_it.is_set()
        holder.stdin.write("release\n")
        holder.stdin.flush()
        thread.join(60)
        return logged, blocked, got_it.is_set()
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
