"""Fail before anything starts, and leave nothing behind (README, "Reliability"): a mistyped
override and an unreachable tracking server are one line each before Prefect or Ray start, and a
command stopped by SIGTERM takes the servers it started down with it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from flows.cli import main
from mvg.overrides import OverrideError, check_overrides
from mvg.tracking import TrackingServerUnreachable, check_reachable
from tests import servers

# a model small enough for a test to train a few steps in seconds
TINY = ["--set", "model.depth=2", "--set", "model.embed_dim=96", "--set", "model.num_heads=3", "--set", "optim.batch_size=4",
        "--set", "optim.warmup_steps=2"]


# ------------------------------------------------------------------------------ override types


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("model.depth=2.5", "model.depth: expected an integer, got 2.5"),
        ("optim.lr=abc", "optim.lr: expected a number, got 'abc'"),
        ("optim.bf16=yes", "optim.bf16: expected true or false, got 'yes'"),
        ("objective.mask_ratio=0.5", "objective.mask_ratio: expected a list of 2 numbers, got 0.5"),
        ("objective.colouring=rainbow", "objective.colouring: expected one of binary, predefined, random, got 'rainbow'"),
        ("model.decoder=resnet", "model.decoder 'resnet' is not one of paper, unet"),
        ("model.slot_share=half", "model.slot_share 'half' is not one of learned, task"),
        ("data.dataset_weighting=cubic", "data.dataset_weighting 'cubic' is not one of uniform, sqrt-slices, slices"),
        ("optim.nope=3", "optim has no setting 'nope'"),
    ],
)
def test_mvg_train_refuses_an_override_of_the_wrong_type_naming_key_value_and_type(override, named, capsys):
    assert main(["train", "--set", override]) == 2
    error = capsys.readouterr().err
    assert named in error and error.count("\n") == 1, error


def test_overrides_come_back_as_the_fields_types():
    assert check_overrides({"model": {"depth": 2}, "optim": {"lr": 1}, "objective": {"mask_ratio": [0.5, 0.6]}}) == {
        "model": {"depth": 2}, "optim": {"lr": 1.0}, "objective": {"mask_ratio": (0.5, 0.6)},
    }
    with pytest.raises(OverrideError, match="data.same_case_prompt: expected true or false, got 1"):
        check_overrides({"data.same_case_prompt": 1})
    assert check_overrides({"data.dihedral_tasks": ["denoising", "synthesis"]}) == {"data": {"dihedral_tasks": ("denoising", "synthesis")}}
    with pytest.raises(OverrideError, match="data.dihedral_tasks: expected a list of strings among segmentation, .*, got \\['ct'\\]"):
        check_overrides({"data.dihedral_tasks": ["ct"]})
    with pytest.raises(OverrideError, match="data.dihedral_tasks: expected a list of strings"):
        check_overrides({"data.dihedral_tasks": "denoising"})


# ------------------------------------------------------------------------- the tracking server


def unused_url() -> str:
    """An http URL on loopback that nothing listens on: connections are refused."""
    return f"http://127.0.0.1:{servers.free_port()}"


@pytest.fixture
def silent_server():
    """A loopback socket that accepts connections and never answers (a hung server)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"


@pytest.mark.timeout(120)  # a hang guard, not a speed limit: without its timeout the check would wait forever
def test_check_reachable_names_the_uri_of_a_refused_or_silent_server(silent_server):
    url = unused_url()
    with pytest.raises(TrackingServerUnreachable, match=f"{url} does not answer"):
        check_reachable(url)
    with pytest.raises(TrackingServerUnreachable, match="timed out"):
        check_reachable(silent_server, timeout=0.5)
    check_reachable("sqlite:///nowhere/mlflow.db")  # no server to ask


def test_check_reachable_accepts_any_answer_but_a_server_error():
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    status = {"code": 404}

    class Answer(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(status["code"])
            self.end_headers()

        def log_message(self, *args):
            pass

    with ThreadingHTTPServer(("127.0.0.1", 0), Answer) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{server.server_address[1]}"
        check_reachable(url)  # 404: a server is there (a prefix, a proxy); MLflow reports the rest at once
        status["code"] = 503
        with pytest.raises(TrackingServerUnreachable, match="HTTP 503"):
            check_reachable(url, attempts=1)
        server.shutdown()


def test_mvg_train_with_an_unreachable_tracking_server_fails_at_once_in_one_line(phantom_store, tmp_path):
    url = unused_url()
    env = {**os.environ, "MLFLOW_TRACKING_URI": url, "MVG_HOME": str(tmp_path), "RAY_ADDRESS": ""}
    command = [sys.executable, "-m", "flows.cli", "train", "--store", str(phantom_store), "--max-steps", "2", *TINY]
    # before the check: Prefect and Ray started, then MLflow retried for 294 s, 265 lines of output;
    # the one line and no Ray storage show the check came first (no speed asserted on a shared machine)
    trained = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert trained.returncode == 2, trained.stderr[-2000:]
    assert trained.stderr.strip() == f"mvg train: error: the MLflow tracking server {url} does not answer (Connection refused); start it or point MLFLOW_TRACKING_URI elsewhere"
    assert not (tmp_path / "ray").exists()


@pytest.mark.timeout(120)  # before the check each of these retried for minutes
@pytest.mark.parametrize(
    "arguments",
    [
        ["evaluate"],
        ["promote"],
        ["finetune", "some-dataset"],
        ["predict", "--model", "models:/mvg@champion", "--prompt-image", "p.nii.gz", "--prompt-target", "t.nii.gz",
         "--input", "x.nii.gz", "--output", "y.nii.gz"],
    ],
)
def test_commands_that_use_the_registry_check_the_tracking_server_first(arguments, monkeypatch, tmp_path, capsys):
    url = unused_url()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    monkeypatch.setenv("MVG_HOME", str(tmp_path))
    assert main(arguments) == 2
    assert f"the MLflow tracking server {url} does not answer" in capsys.readouterr().err


def test_predict_from_a_folder_needs_no_tracking_server(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", unused_url())
    arguments = ["predict", "--model", str(tmp_path / "weights"), "--prompt-image", "p.nii.gz", "--prompt-target", "t.nii.gz",
                 "--input", "x.nii.gz", "--output", str(tmp_path / "y.nii.gz")]
    assert main(arguments) == 2
    error = capsys.readouterr().err
    assert "tracking server" not in error and "file not found" in error, error


# ------------------------------------------------------------------------- a command stopped


ROOT = Path(__file__).resolve().parents[1]

# a command in miniature: it starts a child, then blocks; its unwinding takes argv[2] seconds.
# The child's pid is printed inside the `try`, so a signal sent once it is read always finds the
# command in its blocking section, with the slow unwinding still ahead (printed before it, a
# signal could land between the print and the `try` and end the command with nothing to unwind)
STARTS_A_CHILD_AND_BLOCKS = """
import subprocess, sys, time
from flows import lifetime
lifetime.UNWIND_S = float(sys.argv[1])
with lifetime.children_stopped_if_killed():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        print(child.pid, flush=True)
        time.sleep(600)
    finally:
        time.sleep(float(sys.argv[2]))
"""


@pytest.mark.parametrize(
    ("signals", "unwind_s", "unwinding_s", "status"),
    [
        ([signal.SIGINT], 30, 0, -signal.SIGINT),  # Ctrl-C: Python ends itself by SIGINT after unwinding
        ([signal.SIGTERM], 30, 0, 128 + signal.SIGTERM),
        ([signal.SIGTERM], 1, 600, 128 + signal.SIGTERM),  # an unwinding that hangs is cut short
        ([signal.SIGINT, signal.SIGINT], 600, 600, 128 + signal.SIGINT),  # asked twice: no more waiting
    ],
)
def test_a_signalled_command_stops_its_children_and_ends_in_bounded_time(signals, unwind_s, unwinding_s, status):
    command = [sys.executable, "-c", STARTS_A_CHILD_AND_BLOCKS, str(unwind_s), str(unwinding_s)]
    with subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True, start_new_session=True) as process:
        child = psutil.Process(int(process.stdout.readline()))
        for number in signals:
            process.send_signal(number)
            time.sleep(0.5)
        try:
            assert process.wait(timeout=30) == status  # the command's own deadline; unbounded, the cases above wait 600 s
            assert not servers.still_running(psutil.wait_procs([child], timeout=5)[1]), "the child outlived the command"
        finally:
            servers.stop_group(process)
            if child.is_running():
                child.kill()


# a command whose child starts a grandchild and ends first, as Ray's raylet ends before its agents
# notice: the grandchild's pid is printed once its parent is gone
ORPHANS_A_GRANDCHILD_AND_BLOCKS = """
import subprocess, sys, time
from flows import lifetime
with lifetime.children_stopped_if_killed():
    middle = subprocess.run(
        [sys.executable, "-c", "import subprocess, sys; print(subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'], stdout=subprocess.DEVNULL).pid)"],
        stdout=subprocess.PIPE, text=True, check=True,
    )
    print(middle.stdout.strip(), flush=True)
    time.sleep(600)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="adopting orphans is Linux's prctl")
def test_a_descendant_orphaned_before_the_signal_is_stopped_too():
    command = [sys.executable, "-c", ORPHANS_A_GRANDCHILD_AND_BLOCKS]
    with subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True, start_new_session=True) as process:
        orphan = psutil.Process(int(process.stdout.readline()))
        try:
            assert orphan.ppid() == process.pid, "the orphan was not adopted by the command"
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=30) == 128 + signal.SIGTERM
            assert not servers.still_running(psutil.wait_procs([orphan], timeout=5)[1]), "the orphan outlived the command"
        finally:
            servers.stop_group(process)
            if orphan.is_running():
                orphan.kill()


# a command that ends normally with a descendant still running, as a Ray actor process now and then
# hangs on after its raylet is gone; the grandchild is orphaned first, as that actor was
LEAVES_AN_ORPHAN_AND_ENDS = """
import subprocess, sys
from flows import lifetime
with lifetime.children_stopped_if_killed(also_after_a_normal_end=sys.argv[1] == "command"):
    middle = subprocess.run(
        [sys.executable, "-c", "import subprocess, sys; print(subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'], stdout=subprocess.DEVNULL).pid)"],
        stdout=subprocess.PIPE, text=True, check=True,
    )
    print(middle.stdout.strip(), flush=True)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="adopting orphans is Linux's prctl")
@pytest.mark.parametrize(("caller", "outlives"), [("command", False), ("in-process", True)])
def test_what_a_command_started_ends_with_it_however_it_ends(caller, outlives):
    command = [sys.executable, "-c", LEAVES_AN_ORPHAN_AND_ENDS, caller]
    with subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True, start_new_session=True) as process:
        orphan = psutil.Process(int(process.stdout.readline()))
        try:
            assert process.wait(timeout=30) == 0
            # main() called inside another program leaves that program's processes to it
            assert bool(servers.still_running(psutil.wait_procs([orphan], timeout=5)[1])) == outlives
        finally:
            servers.stop_group(process)
            if orphan.is_running():
                orphan.kill()


def command_lines(processes) -> list[str]:
    """The command lines of those still there (one may end while they are listed)."""
    found = []
    for process in processes:
        try:
            found.append(" ".join(process.cmdline()))
        except psutil.Error:
            continue
    return found


@pytest.fixture(scope="module")
def own_prefect_home(tmp_path_factory) -> Path:
    """A Prefect home without a server: the command starts a temporary one of its own, the one that
    was left behind (shared by the module's commands, so its database is created once)."""
    return tmp_path_factory.mktemp("prefect-home")


def prefect_server_started(children, checkpoints: Path) -> bool:
    return any("uvicorn" in line for line in command_lines(children))


def training_started(children, checkpoints: Path) -> bool:
    return bool(list(checkpoints.glob("checkpoint_*")))


@pytest.mark.slow
@pytest.mark.parametrize(
    "moment",
    [
        prefect_server_started,  # before Ray: Python's default SIGTERM left the temporary Prefect server running
        training_started,  # Ray's own handler unwinds; nothing of Ray or Prefect may outlive the command either
    ],
)
def test_a_sigterm_stops_every_process_mvg_train_started(moment, phantom_store, tmp_path, own_prefect_home):
    env = {**os.environ, "MVG_HOME": str(tmp_path / "home"), "RAY_ADDRESS": "", "PREFECT_HOME": str(own_prefect_home)}
    env.pop("PREFECT_API_URL", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    checkpoints = tmp_path / "ray" / "stopped"
    command = [
        sys.executable, "-m", "flows.cli", "train", "--store", str(phantom_store), "--ray-storage", str(tmp_path / "ray"),
        "--run-name", "stopped", "--workers", "1", "--cpus-per-worker", "1", "--max-steps", "1000", "--checkpoint-every", "2",
        "--sample-every", "0", *TINY,
    ]
    with open(tmp_path / "train.log", "w") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    started: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 600
        while not moment(started := psutil.Process(process.pid).children(recursive=True), checkpoints):
            assert process.poll() is None and time.monotonic() < deadline, (tmp_path / "train.log").read_text()[-3000:]
            time.sleep(0.2)
        process.send_signal(signal.SIGTERM)  # the command alone, as `kill PID` does, not its process group
        assert process.wait(timeout=90) != 0
        _, survivors = psutil.wait_procs(started, timeout=10)
        assert not servers.still_running(survivors), "outlived the command:\n" + "\n".join(servers.still_running(survivors))
    finally:
        servers.stop_group(process)
        for leftover in psutil.wait_procs(started, timeout=0)[1]:
            leftover.kill()  # what a failing check found still running


# Ray's native failure handler answered SIGTERM with a 3 s alarm that aborted the process: what a
# stopped command does at exit (Prefect's crash report, Ray's shutdown, the stop of what it
# started) took longer than that on a busy machine, and the stop never ran. Once Ray has started,
# its handler has SIGTERM, so the command's 30 s deadline is set as the unwinding begins
HUNG_EXIT_AFTER_SIGTERM = """
import atexit, os, signal, sys, time
from flows.lifetime import children_stopped_if_killed
from mvg.distributed import ensure_ray

with children_stopped_if_killed():
    ensure_ray()
    atexit.register(time.sleep, 600)  # a shutdown that hangs, registered after Ray's
    print(os.getpid(), flush=True)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(600)
"""


@pytest.mark.slow
def test_a_sigterm_after_ray_started_stops_everything_by_the_deadline(tmp_path):
    with open(tmp_path / "out.log", "w") as log:
        process = subprocess.Popen([sys.executable, "-c", HUNG_EXIT_AFTER_SIGTERM], env={**os.environ, "RAY_ADDRESS": ""},
                                   stdout=subprocess.PIPE, stderr=log, text=True, start_new_session=True)
    try:
        command = psutil.Process(int(process.stdout.readline()))
        started = command.children(recursive=True)  # Ray's GCS, raylet, dashboard and their agents
        assert process.wait(timeout=300) == 128 + signal.SIGTERM, (tmp_path / "out.log").read_text()[-3000:]
        assert "SIGTERM, still stopping 30 s later" in (tmp_path / "out.log").read_text()
        _, survivors = psutil.wait_procs(started, timeout=10)
        assert started and not servers.still_running(survivors), "\n".join(servers.still_running(survivors))
    finally:
        servers.stop_group(process)
