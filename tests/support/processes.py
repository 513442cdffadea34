"""Real processes: a started command and its log, stopping it as an operator would, the
Redis server the fault tests stop and start, `hebdo run` on a free port, and HTTP to it.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.settings import ROOT
from tests.support.smtp import free_port

# --- Processes --------------------------------------------------------------------


@dataclass
class Process:
    popen: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM to the main process only, SIGKILL if it hangs: signalling a Celery
        worker's whole process group kills its pool children first and can deadlock the
        parent."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        return self.popen.returncode


class RedisServer:
    """A private redis-server on a free loopback port, to stop, start and flush at will
    (a broker or rate-limit store going away) without touching the shared one."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed")
        self.binary = binary
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        argv = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1"]
        argv += ["--save", "", "--appendonly", "no"]
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not self.ping():
            if time.monotonic() > deadline:
                raise AssertionError(f"redis-server on port {self.port} did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def flush(self) -> None:
        import redis

        client = redis.Redis(port=self.port)
        client.flushall()
        client.close()

    def ping(self) -> bool:
        import redis

        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        try:
            return bool(client.ping())
        except redis.exceptions.ConnectionError:
            return False
        finally:
            client.close()


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.1)


def kill_tree(process: Process) -> None:
    """SIGKILL a worker and its pool children at once, as a crashed machine would."""
    children = subprocess.run(
        ["pgrep", "-P", str(process.popen.pid)], capture_output=True, text=True
    ).stdout.split()
    for pid in [process.popen.pid, *map(int, children)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGKILL)
    process.popen.wait()


def http(
    url: str, data: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, str]:
    request = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def processes_with(data_dir: Path) -> list[int]:
    """PIDs whose environment names this test's data folder (the children of hebdo run)."""
    marker = f"HEBDO_DATA_DIR={data_dir}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if marker in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def send_now(values: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`hebdo digest send --now` in another process, with these settings only."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("HEBDO_")}
    return subprocess.run(
        [sys.executable, "-m", "service.cli", "digest", "send", "--now", "--yes"],
        env={**environ, **values},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


def start_hebdo_run(
    env: dict[str, str], spawn: Callable[..., Process], *, ready: str, base_url: bool = True
) -> tuple[Process, str, dict[str, str]]:
    """`hebdo run` on a free port, once it printed `ready` and its web app answers:
    the process, its base URL and its settings (`base_url=False`: no HEBDO_BASE_URL,
    as a newcomer runs it)."""
    port = free_port()
    values = {
        **{k: v for k, v in env.items() if base_url or k != "HEBDO_BASE_URL"},
        "HEBDO_WEB_WORKERS": "1",
        "HEBDO_WORKER_CONCURRENCY": "1",
    }
    if base_url:
        values["HEBDO_BASE_URL"] = f"http://127.0.0.1:{port}"
    hebdo = [sys.executable, "-m", "service.cli", "run", "--port", str(port)]
    process = spawn(hebdo, values, ready=ready, timeout=120)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if http(f"{base}/healthz")[0] == 200:
                return process, base, values
        except OSError:
            pass
        assert time.monotonic() < deadline, process.output()[-3000:]
        time.sleep(0.2)


def sign_up_on_the_sample_page(base: str, email: str) -> None:
    """Sign `email` up from the box at the end of the sample article page, as a reader
    without JavaScript would: the form as served, with its hidden fields."""
    status, page = http(f"{base}/exemple")
    assert status == 200 and "Rejoignez gratuitement la communauté" in page
    action = re.search(r'<form class="hebdo-box" method="post" action="([^"]+)"', page)
    assert action and action.group(1) == f"{base}/api/v1/subscriptions"
    fields = dict(re.findall(r'<input type="hidden" name="([a-z_]+)" value="([^"]*)"', page))
    assert "ts" in fields
    fields["email"] = email
    status, body = http(
        action.group(1),
        urllib.parse.urlencode(fields).encode(),
        {"Content-Type": "application/x-www-form-urlencoded", "Referer": f"{base}/exemple"},
    )
    assert status == 200 and "Plus qu’une étape" in body, body


def confirm_from_the_mailbox(base: str, email: str, process: Process) -> str:
    """Wait for `email`'s confirmation mail in /dev/mailbox, press its button; the page."""
    deadline = time.monotonic() + 60
    while email not in http(f"{base}/dev/mailbox/")[1]:
        assert time.monotonic() < deadline, process.output()[-3000:]
        time.sleep(0.3)
    name = re.search(r'href="/dev/mailbox/([^"]+\.eml)"', http(f"{base}/dev/mailbox/")[1])
    assert name
    mail = http(f"{base}/dev/mailbox/{name.group(1)}/raw")[1].replace("=\r\n", "")
    confirm = re.search(rf"{re.escape(base)}(/confirm/[A-Za-z0-9._-]+)", mail)
    assert confirm, mail
    return http(base + confirm.group(1), data=b"")[1]
