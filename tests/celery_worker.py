"""`luna worker` for the Celery test, optionally made to hang in its first step after the step's
first manifest is written (as a machine does when it dies mid-shard): it says so on a FIFO the
test reads, then waits to be killed."""

from __future__ import annotations

import os
import sys
import threading

from luna_cli.main import main

if __name__ == "__main__":
    fifo = os.environ.pop("LUNA_TEST_HANG_FIFO", None)
    if fifo:
        from luna_core.vault import commits

        original = commits.ManifestWriter.commit

        def commit_then_hang(self) -> None:
            written = self.sequence
            original(self)
            if self.sequence == written:
                return  # nothing to write: no manifest, no hang
            with open(fifo, "w") as signal:
                signal.write(f"hanging in {self.prefix} (pid {os.getpid()})\n")
            threading.Event().wait()  # until the test kills this worker

        commits.ManifestWriter.commit = commit_then_hang
    sys.exit(main(["worker", *sys.argv[1:]]))
