"""`hebdo run`: the newcomer's path through real processes, and a clean Ctrl-C."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from tests.conftest import Process, free_port


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


def test_hebdo_run_serves_subscribes_captures_and_stops_on_ctrl_c(
    env: dict[str, str], spawn: Callable[..., Process]
) -> None:
    port = free_port()
    values = {
        **env,
        "HEBDO_BASE_URL": f"http://127.0.0.1:{port}",
        "HEBDO_WEB_WORKERS": "1",
        "HEBDO_WORKER_CONCURRENCY": "1",
    }
    hebdo = [sys.executable, "-m", "service.cli", "run", "--port", str(port)]
    process = spawn(hebdo, values, ready="hebdo: http://", timeout=120)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if http(f"{base}/healthz")[0] == 200:
                break
        except OSError:
            pass
        assert time.monotonic() < deadline, process.output()[-3000:]
        time.sleep(0.2)

    status, body = http(
        f"{base}/api/v1/subscriptions",
        json.dumps({"email": "nouveau@exemple.fr"}).encode(),
        {"Content-Type": "application/json"},
    )
    assert status == 202, body
    deadline = time.monotonic() + 60
    while "nouveau@exemple.fr" not in http(f"{base}/dev/mailbox/")[1]:
        assert time.monotonic() < deadline, process.output()[-3000:]
        time.sleep(0.3)
    mailbox = http(f"{base}/dev/mailbox/")[1]
    name = re.search(r'href="/dev/mailbox/([^"]+\.eml)"', mailbox)
    assert name
    mail = http(f"{base}/dev/mailbox/{name.group(1)}/raw")[1]
    confirm = re.search(rf"{re.escape(base)}(/confirm/[A-Za-z0-9._-]+)", mail.replace("=\r\n", ""))
    assert confirm, mail
    assert "Inscription confirmée" in http(base + confirm.group(1), data=b"")[1]

    # The sample feed was read at start-up; `hebdo digest send --now` mails it to the reader.
    deadline = time.monotonic() + 60
    while "feed sample: ok, 14 new" not in process.output():
        assert time.monotonic() < deadline, process.output()[-3000:]
        time.sleep(0.3)
    environ = {k: v for k, v in os.environ.items() if not k.startswith("HEBDO_")}
    sent = subprocess.run(
        [sys.executable, "-m", "service.cli", "digest", "send", "--now"],
        env={**environ, **values},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert sent.returncode == 0, sent.stderr
    assert "sending to 1 subscribers" in sent.stdout
    deadline = time.monotonic() + 60
    while len(re.findall(r'href="/dev/mailbox/[^"]+\.eml"', http(f"{base}/dev/mailbox/")[1])) < 2:
        assert time.monotonic() < deadline, process.output()[-3000:]
        time.sleep(0.3)
    names = re.findall(r'href="/dev/mailbox/([^"]+\.eml)"', http(f"{base}/dev/mailbox/")[1])
    digest = "".join(http(f"{base}/dev/mailbox/{n}/raw")[1] for n in names)
    assert "Lire l=E2=80=99article" in digest and "lhebdo.example" in digest
    assert "List-Unsubscribe-Post: List-Unsubscribe=One-Click" in digest

    data_dir = Path(values["HEBDO_DATA_DIR"])
    assert (
        len(processes_with(data_dir)) >= 4
    )  # hebdo run, gunicorn, worker, beat (and their children)
    process.popen.send_signal(signal.SIGINT)
    assert process.popen.wait(60) == 0, process.output()[-3000:]
    assert "hebdo: stopped" in process.output()
    assert processes_with(data_dir) == []
