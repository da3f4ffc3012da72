"""Real servers on loopback for integration tests: a free port, waiting until one answers, and
stopping a server by its process group so nothing it spawned is left running."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_http(url: str, process: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    """Poll `url` until it answers 200; fail with the server's log if it dies or never answers."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if urllib.request.urlopen(url, timeout=2).status == 200:
                return
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not come up: {log.read_text()[-3000:]}")
        time.sleep(0.5)


def stop_group(process: subprocess.Popen, timeout: float = 30) -> None:
    """SIGTERM the process group (the server and its workers), then SIGKILL what is left."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=timeout)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@contextmanager
def server_process(command: list[str], log: Path, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen]:
    """Start `command` in its own session (process group) with output to `log`; stop it on exit."""
    with open(log, "w") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        try:
            yield process
        finally:
            stop_group(process)


@contextmanager
def mlflow_server(folder: Path) -> Iterator[tuple[str, Path]]:
    """`mlflow server` on 127.0.0.1 with its own SQLite backend and artifact store under `folder`:
    yields (tracking URI, artifact folder)."""
    port = free_port()
    artifacts = folder / "server-artifacts"
    command = [
        sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        "--backend-store-uri", f"sqlite:///{folder / 'server.db'}", "--artifacts-destination", str(artifacts),
    ]
    log = folder / "mlflow-server.log"
    with server_process(command, log, env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}) as server:
        uri = f"http://127.0.0.1:{port}"
        wait_for_http(f"{uri}/health", server, log)
        yield uri, artifacts
