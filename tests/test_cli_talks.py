"""A command line that talks (README, "Command line"): training prints its progress on stderr,
`--json` leaves one parseable object on stdout, pictures land under `$MVG_HOME/reports/`, every
option explains itself, `--home` goes before or after the command, `--version` answers, and every
command keeps its Prefect runs under `$MVG_HOME/prefect` unless Prefect is configured."""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from flows.cli import build_parser, main
from flows.machine_output import json_output
from flows.prefect_home import keep_runs_under
from mvg.progress import TrainingProgress, clock
from mvg.reports import plot_losses, reports_folder

TINY = ["--set", "model.depth=2", "--set", "model.embed_dim=96", "--set", "model.num_heads=3", "--set", "optim.batch_size=4",
        "--set", "optim.warmup_steps=2"]
PNG = b"\x89PNG\r\n\x1a\n"


def every_parser(parser: argparse.ArgumentParser, name: str = "mvg"):
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command, subparser in action.choices.items():
                yield from every_parser(subparser, f"{name} {command}")


def test_every_option_of_every_command_has_help():
    missing = [
        f"{name} {action.option_strings[0]}"
        for name, parser in every_parser(build_parser())
        for action in parser._actions
        if action.option_strings and (not action.help or action.help == argparse.SUPPRESS)
    ]
    assert not missing, f"options without help: {missing}"
    assert len(list(every_parser(build_parser()))) > 10  # the walk reached the subcommands


def test_version_prints_the_installed_package_version(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as exit:
        main(["--version"])
    assert exit.value.code == 0
    assert capsys.readouterr().out.strip() == f"mvg {version('mvg-pipeline')}"


@pytest.mark.parametrize("argv", [["--home", "H", "store"], ["store", "--home", "H"], ["--home", "X", "store", "--home", "H"]])
def test_home_is_taken_before_or_after_the_command(argv, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MVG_STORE", raising=False)
    monkeypatch.setenv("MVG_HOME", str(tmp_path / "elsewhere"))
    assert main(argv) == 0
    assert f"store {tmp_path / 'H' / 'store'}" in capsys.readouterr().out
    assert build_parser().parse_args(["store"]).home is None  # left out after the command, nothing is set


def test_prefect_runs_go_under_the_home_unless_prefect_is_configured(tmp_path):
    environ: dict[str, str] = {}
    assert keep_runs_under(tmp_path, environ) == tmp_path / "prefect"
    assert environ["PREFECT_HOME"] == str(tmp_path / "prefect") and (tmp_path / "prefect").is_dir()
    # the user's profiles stay where Prefect looks for them by default, so a server set there holds
    assert environ["PREFECT_PROFILES_PATH"] == str(Path("~/.prefect/profiles.toml").expanduser())
    for configured in ({"PREFECT_API_URL": "http://127.0.0.1:4200/api"}, {"PREFECT_HOME": "/theirs"}):
        environ = dict(configured)
        assert keep_runs_under(tmp_path / "other", environ) is None
        assert environ == configured and not (tmp_path / "other").exists()


def test_a_progress_line_says_step_loss_rate_and_time_left():
    stream = io.StringIO()
    progress = TrainingProgress(total=100, episodes_per_step=8, label="demo", stream=stream)
    first = progress.line({"step": 10, "loss": 0.5, "episodes_per_s": 16.0}, now=100.0)
    # first report: from the window's pace, 8 episodes a step at 16/s is 0.5 s a step, 90 steps left
    assert first == "demo step 10/100  loss 0.5000  16.0 episodes/s  ETA 45s"
    # later: from the pace since the first report, 10 steps in 20 s, 80 steps left
    assert progress.line({"step": 20, "loss": 0.25, "episodes_per_s": 99.0}, now=120.0).endswith("ETA 2m40s")
    progress({"step": 30, "loss": 0.125, "episodes_per_s": 4.0})
    assert stream.getvalue().startswith("demo step 30/100  loss 0.1250")
    assert [clock(s) for s in (0, 59.4, 61, 3725)] == ["0s", "59s", "1m01s", "1h02m"]


def test_json_output_keeps_stdout_for_the_object_alone(capfd):
    with json_output(True) as result:
        print("a report line")
        os.system("echo from a child process")  # a child inherits the redirected descriptor
        result({"score": float("nan"), "path": Path("/x")})
    out, err = capfd.readouterr()
    assert json.loads(out) == {"score": None, "path": "/x"} and out.count("\n") == 1
    assert "a report line" in err and "from a child process" in err
    with json_output(None) as result:
        print("plain")
        result({"ignored": True})
    assert capfd.readouterr().out == "plain\n"


def test_loss_curves_are_a_png_in_the_reports_folder(tmp_path):
    folder = reports_folder("demo/run: 1", home=tmp_path)
    assert folder.parent == tmp_path / "reports" and "/" not in folder.name and ":" not in folder.name
    path = plot_losses({"loss": [(1, 1.0), (2, 0.5)], "loss_segmentation": [(1, 2.0), (2, 0.7)]}, "t", folder / "loss.png")
    assert path.read_bytes()[:8] == PNG


@pytest.mark.slow
def test_mvg_train_talks_on_stderr_and_leaves_json_and_a_loss_curve(phantom_store, tmp_path):
    """A few steps of `mvg train --home H --json` with nothing configured: a progress line per log
    on stderr, one JSON object on stdout, the loss curves as a PNG under H/reports/<run>/, no link
    to a server that is not there, and the Prefect runs in H/prefect."""
    home = tmp_path / "home"
    # no Prefect, MLflow or data root configured, as on a fresh machine; Prefect's INFO lines as a
    # user sees them (the flows' own prints among them)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "MVG_"))}
    env |= {"RAY_ADDRESS": "", "PREFECT_LOGGING_LEVEL": "INFO", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    command = [sys.executable, "-m", "flows.cli", "train", "--home", str(home), "--json", "--store", str(phantom_store),
               "--max-steps", "4", "--log-every", "2", "--checkpoint-every", "4", "--sample-every", "0", "--run-name", "talks",
               "--workers", "1", "--cpus-per-worker", "2", *TINY]
    trained = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert trained.returncode == 0, trained.stdout[-3000:] + trained.stderr[-3000:]

    lines = re.findall(r"talks step (\d+)/4  loss \d+\.\d{4}  \d+\.\d episodes/s  ETA \S+", trained.stderr)
    assert lines == ["2", "4"], trained.stderr[-3000:]
    stdout = trained.stdout.strip().splitlines()
    assert len(stdout) == 1, trained.stdout[-3000:]
    summary = json.loads(stdout[0])
    assert summary["run_name"] == "talks" and summary["step"] == 4 and summary["model_uri"] == "models:/mvg/1"
    curves = Path(summary["loss_curves"])
    assert curves == home / "reports" / "talks" / "loss.png" and curves.read_bytes()[:8] == PNG
    assert f"loss curves: {curves}" in trained.stderr
    # SQLite tracking: the command that serves it, not a link to a server nobody started
    assert f"mlflow ui --backend-store-uri sqlite:///{home / 'mlflow.db'}" in trained.stderr
    assert "127.0.0.1:5000/#" not in trained.stderr.replace("then open http://127.0.0.1:5000/#", "")
    assert (home / "prefect" / "prefect.db").is_file(), "the runs are kept beside the other results"


def test_evaluate_and_promote_json_and_the_montages_on_disk(registry, phantom_store, tmp_path, prefect_server, capfd):
    """`mvg evaluate --json` and `mvg promote --json` on a registered version: one object on stdout
    each; the evaluation's montages are files under $MVG_HOME/reports/ and the tables are printed
    once; per-dataset progress bars on stderr."""
    status = main(["evaluate", "--model", "models:/mvg/1", "--store", str(phantom_store), "--max-cases", "1", "--no-promote", "--json"])
    out, err = capfd.readouterr()
    assert status == 0, err[-3000:]
    assert out.count("\n") == 1, out
    summary = json.loads(out)
    assert summary["version"] == "1" and set(summary["scores"]) == {"phantom-segmentation", "phantom-synthesis"}
    montages = [Path(path) for path in summary["montages"]]
    assert {path.name for path in montages} == {"montage-phantom-segmentation.png", "montage-phantom-synthesis.png"}
    assert all(path.parent.parent == tmp_path / "reports" and path.read_bytes()[:8] == PNG for path in montages)
    assert f"montage: {montages[0]}" in err
    assert err.count("Segmentation, mIoU (paper Table 2)") == 1
    assert "evaluate phantom-segmentation" in err and "1/1" in err  # the dataset's bar, at its end

    assert main(["promote", "--model", "models:/mvg/1", "--json"]) == 0
    out, err = capfd.readouterr()
    decision = json.loads(out)
    assert out.count("\n") == 1 and decision["version"] == "1" and isinstance(decision["promoted"], bool)
    assert f"version 1: {'promoted' if decision['promoted'] else 'not promoted'}" in err


@pytest.mark.slow
def test_mvg_promote_says_its_verdict_once(registry, tmp_path):
    """One verdict line, the command's: the promote flow returns its decision and prints none of it
    (a print there reaches the terminal too, as a line of Prefect's log at its default level).
    Run as a user runs it, in a fresh process whose Prefect logging nobody has touched; with --json
    the line is on stderr and stdout holds the one JSON object."""
    from mvg.tracking import record_evaluation

    record_evaluation(registry.tracking_uri, "mvg", "1", {"acdc": {"miou": 0.7}}, "evaluation-run", baselines={"acdc": {"miou": 0.5}})
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "MVG_"))}
    env |= {"PREFECT_LOGGING_LEVEL": "INFO", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    command = [sys.executable, "-m", "flows.cli", "promote", "--home", str(tmp_path), "--model", "models:/mvg/1", "--json"]
    promoted = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert promoted.returncode == 0, promoted.stderr[-3000:]

    assert promoted.stdout.count("\n") == 1 and json.loads(promoted.stdout)["promoted"] is True, promoted.stdout
    verdict = "version 1: promoted to @champion (beats its baseline on every dataset (acdc miou 0.7 vs copy-prompt 0.5); no champion yet)"
    assert verdict in promoted.stderr and promoted.stderr.count("version 1") == 1, promoted.stderr[-3000:]
    assert "for flow 'promote'" in promoted.stderr, "Prefect's INFO lines are shown: a print of the flow would be among them"


def test_the_demo_budget_buys_the_steps_that_fit_what_is_left_of_it():
    from mvg.budget import LAUNCH_S, STEP_OVERHEAD, steps_within

    pace = 3.0  # steps/s, as calibrated
    assert steps_within(4, pace, spent_s=15) == int((240 - 15 - LAUNCH_S) * pace * (1 - STEP_OVERHEAD))
    assert steps_within(4, pace, spent_s=60) < steps_within(4, pace, spent_s=15) < steps_within(8, pace, spent_s=15)
    assert steps_within(4, pace / 2, spent_s=15) == pytest.approx(steps_within(4, pace, spent_s=15) / 2, abs=1)
    assert steps_within(0.1, pace, spent_s=30) == 10  # a budget spent before training still trains a little


def test_a_slow_machine_trains_the_floor_of_steps_and_is_told_how_far_over_budget(tmp_path, monkeypatch):
    import mvg.budget
    from mvg.config import preset
    from mvg.distributed import Scaling

    monkeypatch.setenv("MVG_HOME", str(tmp_path))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    pace = {"steps/s": 1.0}
    monkeypatch.setattr(mvg.budget, "steps_per_second", lambda *args, **kwargs: pace["steps/s"])  # the calibration's verdict
    slow = mvg.budget.budget(preset("tiny-cpu"), ["store"], Scaling(), 4, uri, "demo", min_steps=700)
    assert slow.steps == 700 and slow.bought == mvg.budget.steps_within(4, 1.0, slow.calibration_s) < 700
    assert slow.over_budget_s == pytest.approx((700 - slow.bought) / (1 - mvg.budget.STEP_OVERHEAD))
    pace["steps/s"] = 10.0
    fast = mvg.budget.budget(preset("tiny-cpu"), ["store"], Scaling(), 4, uri, "demo", min_steps=700)
    assert fast.steps > 700 and fast.bought is None and fast.over_budget_s == 0.0
    with pytest.raises(ValueError, match="cannot be negative"):
        mvg.budget.budget(preset("tiny-cpu"), ["store"], Scaling(), 4, uri, "demo", min_steps=-1)


def test_a_run_launched_again_keeps_the_steps_it_was_started_with(tmp_path, monkeypatch):
    from mvg.budget import budget, earlier_schedule
    from mvg.config import preset
    from mvg.distributed import Scaling
    from mvg.tracking import RunLogger, open_run, tracking_uri

    monkeypatch.setenv("MVG_HOME", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = tracking_uri()
    assert earlier_schedule(uri, "demo") is None
    run = open_run("demo")
    config = preset("tiny-cpu").with_overrides(optim={"steps": 321, "warmup_steps": 9})
    RunLogger(uri, run.run_id).log_setup(config.to_dict(), {})  # as rank 0 logs them
    assert earlier_schedule(uri, "demo") == (321, 9) and earlier_schedule(uri, "other") is None
    kept = budget(preset("tiny-cpu"), [str(tmp_path / "no-store")], Scaling(), 4, uri, "demo")  # no calibration: no store needed
    assert (kept.steps, kept.warmup_steps, kept.steps_per_s) == (321, 9, None)
    assert kept.overrides() == {"optim": {"steps": 321, "warmup_steps": 9}}
