"""Real servers for the operations tests: PostgreSQL from Debian's package, Luna's own `luna ui` and
`luna mlflow-server`, and headless Chromium driven over the DevTools protocol. Every start waits on
what the server prints (a pipe), never on a sleep."""

from __future__ import annotations

import base64
import glob
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

# the tests import these from here too
from devtools.processes import Service, free_port  # noqa: F401

# set by .ci/run: a missing PostgreSQL or Chromium fails, not skips
REQUIRE_ENV = "LUNA_REQUIRE_SERVICES"


def unavailable(what: str) -> None:
    """Skip (a developer machine without the package) or fail (CI, which installs it)."""
    if os.environ.get(REQUIRE_ENV):
        pytest.fail(f"{what} (CI installs it: see .ci/run)")
    pytest.skip(f"{what}; install it to run this test")


def postgres_bin() -> Path | None:
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4])
    )
    return Path(found[-1]).parent if found else None


class PostgresServer:
    """A throwaway PostgreSQL cluster on a free 127.0.0.1 port (trust auth, user `luna`)."""

    def __init__(self):
        bindir = postgres_bin()
        if bindir is None:
            unavailable("PostgreSQL is not installed (Debian package postgresql)")
        self.bindir = bindir
        self.dir = Path(tempfile.mkdtemp(prefix="luna-pg-"))
        self.data = self.dir / "data"
        self.port = free_port()
        # initdb and postgres refuse to run as root: run them as `nobody`, in a folder it owns.
        self.user = (65534, 65534) if os.geteuid() == 0 else None
        if self.user:
            os.chown(self.dir, *self.user)
        self._run(
            "initdb", "-D", str(self.data), "-U", "luna", "-A", "trust", "-E", "UTF8", "--no-sync"
        )
        self.server = Service(
            "postgres",
            [
                str(bindir / "postgres"),
                "-D",
                str(self.data),
                "-p",
                str(self.port),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                f"unix_socket_directories={self.dir}",
                "-c",
                "fsync=off",
            ],
            ready="ready to accept connections",
            user=self.user,
        )
        self.server.wait_ready(120)

    def _run(self, program: str, *args: str) -> None:
        preexec = None
        if self.user:
            uid, gid = self.user

            def preexec():
                os.setgroups([])
                os.setgid(gid)
                os.setuid(uid)

        done = subprocess.run(
            [str(self.bindir / program), *args],
            capture_output=True,
            text=True,
            preexec_fn=preexec,
            cwd=self.dir,
        )
        assert done.returncode == 0, f"{program} failed: {done.stdout}\n{done.stderr}"

    def url(self, database: str) -> str:
        return f"postgresql://luna@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        import psycopg2

        con = psycopg2.connect(self.url("postgres"))
        con.autocommit = True
        with con.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        con.close()
        return self.url(name)

    def query(self, database: str, sql: str) -> list[tuple]:
        import psycopg2

        with psycopg2.connect(self.url(database)) as con, con.cursor() as cur:
            cur.execute(sql)
            return cur.fetchall()

    def stop(self) -> None:
        self.server.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class Chromium:
    """Headless Chromium over the DevTools protocol: open a page, read its rendered text,
    screenshot it."""

    def __init__(self):
        executable = shutil.which("chromium") or shutil.which("chromium-browser")
        if executable is None:
            unavailable("Chromium is not installed (Debian package chromium)")
        self.profile = tempfile.mkdtemp(prefix="luna-chromium-")
        self.service = Service(
            "chromium",
            [
                executable,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--window-size=1600,1000",
                f"--user-data-dir={self.profile}",
                "--remote-debugging-port=0",
                "about:blank",
            ],
            ready=r"DevTools listening on ws://",
        )
        self.service.wait_ready(60)
        endpoint = next(
            line for line in self.service.lines if "DevTools listening on" in line
        ).split()[-1]
        from websockets.sync.client import connect

        self.socket = connect(endpoint, max_size=None, open_timeout=30)
        self._id = 0

    def call(self, method: str, session: str | None = None, **params) -> dict:
        self._id += 1
        message = {"id": self._id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        self.socket.send(json.dumps(message))
        while True:  # events arrive in between: skip to this call's answer
            answer = json.loads(self.socket.recv(timeout=120))
            if answer.get("id") == self._id:
                if "error" in answer:
                    raise AssertionError(f"{method}: {answer['error']}")
                return answer["result"]

    def open(self, url: str) -> str:
        target = self.call("Target.createTarget", url=url)["targetId"]
        return self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]

    def text(self, session: str) -> str:
        result = self.call(
            "Runtime.evaluate",
            session,
            expression="document.body ? document.body.innerText : ''",
            returnByValue=True,
        )
        return result["result"].get("value", "")

    def wait_for_text(self, session: str, needles: list[str], timeout: float = 90) -> str:
        """The page's text once every needle shows (a script in the page resolves the wait: no
        sleep)."""
        script = """new Promise((resolve) => {
            const needles = %s;
            const seen = () => needles.every(
                (n) => document.body && document.body.innerText.includes(n));
            if (seen()) { resolve(true); return; }
            const observer = new MutationObserver(() => {
                if (seen()) { observer.disconnect(); resolve(true); }
            });
            observer.observe(document, {subtree: true, childList: true, characterData: true});
            setTimeout(() => { observer.disconnect(); resolve(seen()); }, %d);
        })""" % (json.dumps(needles), int(timeout * 1000))
        # a navigation (a redirect) destroys the page's context: ask the new page
        for _ in range(5):
            try:
                found = self.call(
                    "Runtime.evaluate",
                    session,
                    expression=script,
                    awaitPromise=True,
                    returnByValue=True,
                )
                break
            except AssertionError as exc:
                if "context" not in str(exc):
                    raise
        text = self.text(session)
        missing = [n for n in needles if n not in text]
        assert found["result"].get("value") and not missing, (
            f"never shown: {missing}; the page said:\n{text[:3000]}"
        )
        return text

    def screenshot(self, session: str, path: Path) -> Path:
        data = self.call("Page.captureScreenshot", session, format="png")["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        try:
            self.socket.close()
        finally:
            self.service.stop()
            shutil.rmtree(self.profile, ignore_errors=True)
