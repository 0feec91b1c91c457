"""Child processes for tests and benchmarks: a server started as a person starts it, whose output is
read line by line (ready when a line matches: a pipe, never a sleep), stopped with its whole process
group; and a free port on 127.0.0.1."""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import threading


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Service:
    """A child process whose output is read line by line; `ready` is set when a line matches."""

    def __init__(
        self,
        name: str,
        command: list[str],
        ready: str,
        env: dict | None = None,
        cwd: str | None = None,
        user: tuple[int, int] | None = None,
    ):
        self.name, self.lines, self.ready = name, [], threading.Event()
        self._pattern = re.compile(ready)
        preexec = None
        if user is not None:
            uid, gid = user

            def preexec():  # drop root for programs that refuse it (postgres)
                os.setgroups([])
                os.setgid(gid)
                os.setuid(uid)

        self.process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd=cwd,
            preexec_fn=preexec,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line.rstrip())
            if self._pattern.search(line):
                self.ready.set()
        self.ready.set()  # the process ended: wake the waiter, who sees it is gone

    def wait_ready(self, timeout: float) -> None:
        if not self.ready.wait(timeout) or self.process.poll() is not None:
            raise AssertionError(
                f"{self.name} did not become ready within {timeout:.0f}s; its output:\n"
                + "\n".join(self.lines[-40:])
            )

    def wait_listening(self, port: int, timeout: float) -> None:
        """Until 127.0.0.1:`port` accepts connections: some servers log their address just before
        they bind it. Each refused attempt waits a little on an Event that nothing sets (a
        bounded poll of the condition itself, with a deadline)."""
        import time

        deadline, pause = time.monotonic() + timeout, threading.Event()
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=5).close()
                return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(
                        f"{self.name} never listened on port {port}; its output:\n"
                        + "\n".join(self.lines[-40:])
                    ) from None
                pause.wait(0.2)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, 15)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                pass
        # What the group still holds goes too: a code server `luna ui` started while shutting down
        # outlived it once (found orphaned, its heartbeat never ending it).
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, 9)
        self.process.wait()
