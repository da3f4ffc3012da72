"""The command line passes on only what it was given: every default lives in the flow's (or the
function's) own signature, and the store default is applied once, by the flow."""

from __future__ import annotations

import argparse
import os
import sys
import types

import pytest

from flows.cli import build_parser, main

# the commands whose options are a flow's or a function's parameters
COMMANDS = ("phantoms", "ingest", "real-store", "train", "evaluate", "promote", "finetune", "ablate", "demo")
LISTS = {"set"}  # repeatable options collect into a list; an empty one means "none given"


def subparsers() -> dict:
    parser = build_parser()
    (commands,) = [action for action in parser._actions if action.dest == "command"]
    return commands.choices


@pytest.mark.parametrize("command", COMMANDS)
def test_every_option_left_out_is_none(command):
    parser = subparsers()[command]
    for action in parser._actions:
        if action.option_strings and action.dest not in ("help", *LISTS):
            # SUPPRESS (--home after the command): left out, the option sets nothing at all
            assert action.default in (None, argparse.SUPPRESS), f"mvg {command} {action.option_strings[0]} has its own default {action.default!r}"


def fake_module(monkeypatch, name: str, **attributes) -> None:
    """Stand in for a flow module: the flow is not run, only what it is called with is recorded."""
    monkeypatch.setitem(sys.modules, name, types.SimpleNamespace(**attributes))


def test_flows_get_only_the_options_given_and_apply_the_store_default_themselves(monkeypatch, capsys):
    monkeypatch.delenv("MVG_STORE", raising=False)
    calls = {}

    def recorder(name, result):
        def flow(*args, **kwargs):
            calls[name] = (args, kwargs)
            return result
        return flow

    ingested = {"dataset": "d", "directory": "x", "ingested": 1, "skipped": 0, "failed": 0, "rows": []}
    fake_module(monkeypatch, "flows.ingest", ingest_flow=recorder("ingest", types.SimpleNamespace(result=lambda **_: ingested)))
    fake_module(monkeypatch, "flows.promote", promote_flow=recorder("promote", {"version": "1", "promoted": False, "reason": "r"}))
    fake_module(monkeypatch, "flows.finetune", finetune_flow=recorder(
        "finetune", {"cases": {"d": ["c"]}, "parent": "p", "model_uri": "models:/mvg/2", "alias": "finetuned"}))

    def train_flow(preset: str = "tiny-cpu", workers: int = 2, **kwargs):  # the defaults the CLI must read
        calls["train"] = ((), {"preset": preset, "workers": workers, **kwargs})
        return {}

    fake_module(monkeypatch, "flows.train", train_flow=train_flow)

    assert main(["ingest", "source-folder"]) == 0
    assert calls["ingest"] == (("source-folder",), {"progress": True, "return_state": True})
    assert main(["ingest", "source-folder", "--size", "64", "--store", "s3://bucket/store"]) == 0
    assert calls["ingest"][1] == {"progress": True, "return_state": True, "size": 64, "store": "s3://bucket/store"}
    assert main(["promote"]) == 0 and calls["promote"] == ((), {})
    assert main(["promote", "--rule", "mean"]) == 0 and calls["promote"] == ((), {"rule": "mean"})
    assert main(["finetune", "new-dataset"]) == 0 and calls["finetune"] == ((), {"sources": ["new-dataset"]})
    assert "(alias @finetuned)" in capsys.readouterr().out  # the flow's alias, reported back

    # train needs the preset (to check --set) and the workers (to share the cores): the flow's own defaults
    assert main(["train"]) == 0
    expected = {"preset": "tiny-cpu", "workers": 2, "overrides": {}, "cpus_per_worker": max(1, (os.cpu_count() or 1) // 2)}
    assert calls["train"] == ((), expected)
