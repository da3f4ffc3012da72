"""Real servers on loopback for integration tests: a free port, waiting until one answers, and
stopping a server by its process group so nothing it spawned is left running."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
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


# the tests need tracking and the registry only: no telemetry, and no job runner (MLflow 3's server
# otherwise forks a pool of huey consumer processes that compete with the test for the CPU)
MLFLOW_SERVER_ENV = {"MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


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
    with server_process(command, log, env={**os.environ, **MLFLOW_SERVER_ENV}) as server:
        uri = f"http://127.0.0.1:{port}"
        wait_for_http(f"{uri}/health", server, log)
        yield uri, artifacts


# what a client of the loopback S3 server needs; moto accepts any credentials
S3_CLIENT_ENV = {"AWS_ACCESS_KEY_ID": "mvg-test", "AWS_SECRET_ACCESS_KEY": "mvg-test-secret", "AWS_DEFAULT_REGION": "us-east-1"}


@contextmanager
def s3_server(folder: Path) -> Iterator[dict[str, str]]:
    """moto's standalone S3 API server on 127.0.0.1: yields the environment a client needs
    (`AWS_ENDPOINT_URL` and credentials), the same variables a real MinIO or S3 deployment uses."""
    port = free_port()
    command = [str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)]
    log = folder / "s3-server.log"
    with server_process(command, log) as server:
        endpoint = f"http://127.0.0.1:{port}"
        wait_for_http(f"{endpoint}/moto-api/", server, log)
        yield {"AWS_ENDPOINT_URL": endpoint, **S3_CLIENT_ENV}


def free_ports(count: int) -> list[int]:
    """`count` distinct free ports on 127.0.0.1: every probe stays bound until all are chosen, so no
    port repeats (free_port called twice may answer the same one)."""
    probes = [socket.socket() for _ in range(count)]
    try:
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [probe.getsockname()[1] for probe in probes]
    finally:
        for probe in probes:
            probe.close()


def processes_mentioning(text: str) -> list:
    """Every live process (psutil.Process) whose command line contains `text`, this one excepted."""
    import psutil

    found = []
    for process in psutil.process_iter(["cmdline"]):
        if process.pid != os.getpid() and text in " ".join(process.info["cmdline"] or ()):
            found.append(process)
    return found


def still_running(processes) -> list[str]:
    """'PID COMMAND LINE' of the psutil processes still running; a zombie has ended (only its
    parent's wait is missing, and an orphan's new parent may be slow to reap it)."""
    import psutil

    running = []
    for process in processes:
        try:
            if process.status() != psutil.STATUS_ZOMBIE:
                running.append(f"{process.pid} {' '.join(process.cmdline())[:160]}")
        except psutil.Error:  # gone
            continue
    return running


def ray_cli() -> str | None:
    """The `ray` command of this interpreter's environment, else the one on PATH."""
    beside = Path(sys.executable).with_name("ray")
    return str(beside) if beside.exists() else shutil.which("ray")


@dataclass(frozen=True)
class RayHead:
    process: subprocess.Popen  # `ray start --head --block`, leader of its own process group
    log: Path  # its output
    gcs_address: str  # 127.0.0.1:PORT, what RAY_ADDRESS names inside a job
    dashboard_url: str  # http://127.0.0.1:PORT: job submission and the state API
    token: str  # this head's own authentication token (Ray's token auth is on by default)
    temp_dir: Path  # logs, sockets and session files of this head only

    @property
    def headers(self) -> dict[str, str]:
        """HTTP headers for the dashboard: JobSubmissionClient(url, headers=...), StateApiClient."""
        return {"Authorization": f"Bearer {self.token}"}

    def wait_until_up(self, timeout: float = 120) -> None:
        """Wait until `ray start` has finished (it writes the cluster's address into its temp dir last;
        stopped before that, it takes 30 s to die) and the job API answers; fail with the head's log."""
        deadline = time.monotonic() + timeout
        address_file = self.temp_dir / "ray_current_cluster"
        request = urllib.request.Request(f"{self.dashboard_url}/api/version", headers=self.headers)
        while True:
            try:
                if address_file.exists() and urllib.request.urlopen(request, timeout=2).status == 200:
                    return
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the Ray head did not come up: {self.log.read_text()[-3000:]}")
            time.sleep(0.5)


@contextmanager
def ray_head(log: Path, num_cpus: int = 2, wait: bool = True) -> Iterator[RayHead]:
    """`ray start --head --block` on 127.0.0.1 only, every port free or left to the OS, a short temp dir
    of its own (Ray's unix socket paths must stay under ~107 characters) and an auth token of its own
    (not ~/.ray/auth_token, which the local Ray of other tests shares). `wait=False` returns at once:
    start something else meanwhile, then call `head.wait_until_up()`.

    Stopped by its process group, never `ray stop` (which stops every Ray on the machine); when the
    block ends without an error it fails if any process of the head outlived the stop, or anything
    still names its temp dir."""
    gcs, dashboard, client, agent_http, agent_grpc, runtime_env_agent, metrics = free_ports(7)
    temp_dir = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
    command = [
        ray_cli() or "ray", "start", "--head", "--block", "--disable-usage-stats",
        "--node-ip-address", "127.0.0.1", "--port", str(gcs), "--num-cpus", str(num_cpus), "--num-gpus", "0",
        "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard), "--ray-client-server-port", str(client),
        "--dashboard-agent-listen-port", str(agent_http), "--dashboard-agent-grpc-port", str(agent_grpc),
        "--runtime-env-agent-port", str(runtime_env_agent), "--metrics-export-port", str(metrics),
        "--min-worker-port", "0", "--max-worker-port", "0",  # workers, node and object managers: OS-chosen ports
        "--temp-dir", str(temp_dir),
    ]
    token = secrets.token_hex(32)
    env = {key: value for key, value in os.environ.items() if key not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH")}
    env |= {
        "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token,  # inherited by the jobs' drivers and workers
        # Ray turns --node-ip-address 127.0.0.1 into the machine's routable address and its gRPC servers
        # then listen on every interface; single-machine mode (Ray's own on macOS and Windows) keeps the
        # node at 127.0.0.1, where they listen on loopback only
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        # on SIGTERM `ray start --block` first drains the node for up to 30 s (for Serve); nothing to drain here
        "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
    }
    try:
        with open(log, "w") as output:
            process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    except BaseException:
        shutil.rmtree(temp_dir, ignore_errors=True)
        raise
    head = RayHead(process, log, f"127.0.0.1:{gcs}", f"http://127.0.0.1:{dashboard}", token, temp_dir)
    try:
        if wait:
            head.wait_until_up()
        yield head
    except BaseException:
        _stop_ray_head(head, check=False)
        raise
    _stop_ray_head(head, check=True)


def _stop_ray_head(head: RayHead, check: bool, grace: float = 30) -> None:
    """Stop the head's process group and give every process of the head `grace` seconds to go: those
    it spawned (agents and workers sit in process groups of their own), those that inherited its token
    wherever they are (a job's driver runs in a session of its own), and any naming its temp dir.
    What is left is killed and, with `check`, reported."""
    import psutil

    try:
        spawned = [psutil.Process(head.process.pid), *psutil.Process(head.process.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        spawned = []
    stop_group(head.process)
    _, survivors = psutil.wait_procs(spawned, timeout=grace)
    leftovers = stop_processes_with_environment("RAY_AUTH_TOKEN", head.token, grace=5)
    for process in {p.pid: p for p in [*survivors, *processes_mentioning(str(head.temp_dir))]}.values():
        try:
            leftovers.append(f"{process.pid} {' '.join(process.cmdline())}")
            process.kill()
        except psutil.Error:
            pass
    shutil.rmtree(head.temp_dir, ignore_errors=True)
    if check and leftovers:
        raise AssertionError("Ray processes outlived the head's stop:\n" + "\n".join(leftovers))


def processes_with_environment(key: str, value: str) -> list[str]:
    """'PID COMMAND LINE' of every live process (of this user; others' environments cannot be read)
    whose environment has `key=value`: whatever a server, a worker or their children started
    inherits the environment, wherever it sits in the process tree."""
    import psutil

    found = []
    for process in psutil.process_iter(["pid"]):
        if process.pid == os.getpid():
            continue
        try:
            if process.environ().get(key) == value:
                found.append(f"{process.pid} {' '.join(process.cmdline())}")
        except psutil.Error:
            continue
    return found


def stop_processes_with_environment(key: str, value: str, grace: float = 30) -> list[str]:
    """Wait up to `grace` seconds for the processes with `key=value` in their environment to end,
    SIGKILL (by pid) those still there, and return them as 'PID COMMAND LINE' lines."""
    deadline = time.monotonic() + grace
    while (left := processes_with_environment(key, value)) and time.monotonic() < deadline:
        time.sleep(0.5)
    for line in left:
        try:
            os.kill(int(line.split()[0]), signal.SIGKILL)
        except ProcessLookupError:
            pass
    return left


# run in a fresh process (nothing of the test's imports or state): load the registered candidate
# from the tracking server in MLFLOW_TRACKING_URI and paint query slices from one prompt pair
LOAD_AND_PAINT = """
import sys, numpy as np, mlflow
from mvg.pyfunc import as_model_input
model = mlflow.pyfunc.load_model("models:/mvg@candidate")
data = np.load(sys.argv[1])
painted = model.predict(as_model_input(data["prompt_image"][None], data["prompt_target"][None], data["queries"]),
                        params={"task": "segmentation"})
np.save(sys.argv[2], painted)
"""
