"""Integration: prefect.yaml against a real Prefect server on loopback, as its header comment says to
use it: create the pools, `prefect --no-prompt deploy --all`, a worker on `mvg-process`, then a run of
the `ingest` deployment on a phantom dataset. Every deployment of prefect.yaml must exist as written,
the evaluate triggers must fire on a completed `train` run of their own pool (and on nothing else),
and the ingest run must complete and publish its table artifact.

The server and the worker run in sessions of their own with a private PREFECT_HOME; they are stopped
by process group, and the test fails if any process carrying that PREFECT_HOME is left.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from tests import servers

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
PREFECT = str(Path(sys.executable).with_name("prefect"))
CLUSTER_TEMPLATE = REPO / "infra" / "prefect" / "mvg-cluster.base-job-template.json"
INGEST = "ingest/ingest-nightly"
DATASET = "phantom-segmentation"


def prefect_yaml() -> dict:
    return yaml.safe_load((REPO / "prefect.yaml").read_text())


def isolated_environment(home: Path, api_url: str, mvg_home: Path) -> dict[str, str]:
    """The environment of every subprocess: no PREFECT_* setting of this session (conftest's
    PREFECT_HOME, a harness's API URL) leaks in; the server's scheduler is off, so the nightly and
    weekly schedules cannot start real runs while the test's worker polls."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PREFECT_", "MVG_"))}
    return env | {
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": api_url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false",
        "PREFECT_WORKER_QUERY_SECONDS": "2",
        "PREFECT_LOGGING_LEVEL": "INFO",
        "MVG_HOME": str(mvg_home),
    }


def run(command: list[str], env: dict[str, str], timeout: float = 300) -> str:
    done = subprocess.run(command, check=False, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return done.stdout


def create_pools(env: dict[str, str]) -> None:
    """The two `prefect work-pool create` commands of prefect.yaml's header, side by side."""
    cluster = ["--base-job-template", str(CLUSTER_TEMPLATE)] if CLUSTER_TEMPLATE.exists() else []
    commands = [
        [PREFECT, "work-pool", "create", "mvg-process", "--type", "process"],
        [PREFECT, "work-pool", "create", "mvg-cluster", "--type", "kubernetes", *cluster],
    ]
    started = [subprocess.Popen(c, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for c in commands]
    for command, process in zip(commands, started):
        output, _ = process.communicate(timeout=120)
        assert process.returncode == 0, f"{' '.join(command)} failed:\n{output[-3000:]}"


async def read_deployments(api_url: str) -> dict:
    from prefect.client.orchestration import PrefectClient

    async with PrefectClient(api_url) as client:
        deployments = {d.name: d for d in await client.read_deployments()}
        automations = await client.read_automations()
        flows = {f.id: f.name for f in await client.read_flows()}
    return {"deployments": deployments, "automations": automations, "flows": flows}


def check_deployed(api_url: str) -> dict:
    """Every deployment of prefect.yaml is on the server with its pool, parameters, schedules and
    triggers; returns the deployments by name."""
    state = asyncio.run(read_deployments(api_url))
    deployed, automations = state["deployments"], state["automations"]
    declared = prefect_yaml()["deployments"]
    assert sorted(deployed) == sorted(d["name"] for d in declared)
    for spec in declared:
        deployment = deployed[spec["name"]]
        assert deployment.entrypoint == spec["entrypoint"]
        assert deployment.work_pool_name == spec["work_pool"]["name"]
        assert deployment.parameters == spec["parameters"], spec["name"]
        assert deployment.job_variables == spec["work_pool"].get("job_variables", {}), spec["name"]
        crons = [(s.schedule.cron, s.schedule.timezone, s.active) for s in deployment.schedules]
        assert crons == [(s["cron"], s["timezone"], s.get("active", True)) for s in spec.get("schedules") or []]
        pull = deployment.pull_steps[0]["prefect.deployments.steps.set_working_directory"]["directory"]
        assert pull == ("/opt/mvg" if spec["work_pool"]["name"] == "mvg-cluster" else str(REPO))
        owned = [a for a in automations if any(getattr(action, "deployment_id", None) == deployment.id for action in a.actions)]
        assert len(owned) == len(spec.get("triggers") or []), spec["name"]
    assert state["flows"][deployed["ingest-nightly"].flow_id] == "ingest"
    assert state["flows"][deployed["verify-nightly"].flow_id] == "verify-store"
    assert {state["flows"][deployed[name].flow_id] for name in ("train-weekly", "train-cluster")} == {"train"}
    return deployed


def train_completed(pool: str | None):
    """The event the server emits when a `train` flow run completes: a deployment's run names its
    work pool among the related resources, a subflow's run (the pipeline's) does not."""
    from prefect.events import Event

    related = [{"prefect.resource.id": f"prefect.flow.{uuid.uuid4()}", "prefect.resource.role": "flow", "prefect.resource.name": "train"}]
    if pool:
        related.append({"prefect.resource.id": f"prefect.work-pool.{uuid.uuid4()}", "prefect.resource.role": "work-pool", "prefect.resource.name": pool})
    return Event(
        event="prefect.flow-run.Completed",
        resource={"prefect.resource.id": f"prefect.flow-run.{uuid.uuid4()}", "prefect.state-name": "Completed", "prefect.state-type": "COMPLETED"},
        related=related,
    )


async def fire_train_triggers(api_url: str, deployed: dict, timeout: float = 90) -> dict[str, int]:
    """Emit completed `train` runs (a subflow's, one in mvg-cluster, one in mvg-process) and wait for
    the evaluate runs they trigger; delete those runs before any worker could take them. Returns the
    number of flow runs each deployment got."""
    from prefect.client.orchestration import PrefectClient
    from prefect.events.clients import PrefectEventsClient

    async with PrefectEventsClient(api_url) as events:
        for pool in (None, "mvg-cluster", "mvg-process"):  # the one that must not fire goes first
            await events.emit(train_completed(pool))
    evaluators = {deployed[name].id: name for name in ("evaluate-after-train", "evaluate-after-train-cluster")}
    async with PrefectClient(api_url) as client:
        deadline = time.monotonic() + timeout
        while True:
            runs = await client.read_flow_runs()
            if {run.deployment_id for run in runs} >= set(evaluators) or time.monotonic() > deadline:
                break
            await asyncio.sleep(1)
        await asyncio.sleep(3)  # a spurious extra run would show up by now
        runs = await client.read_flow_runs()
        for run in runs:
            await client.delete_flow_run(run.id)
        assert not await client.read_flow_runs()
    counts: dict[str, int] = {}
    for run in runs:
        name = evaluators.get(run.deployment_id, f"other:{run.deployment_id}")
        counts[name] = counts.get(name, 0) + 1
    return counts


async def wait_for_flow_run(api_url: str, flow_run_id: str, timeout: float):
    from prefect.client.orchestration import PrefectClient

    async with PrefectClient(api_url) as client:
        deadline = time.monotonic() + timeout
        while True:
            run = await client.read_flow_run(uuid.UUID(flow_run_id))
            if run.state is not None and run.state.is_final():
                return run
            if time.monotonic() > deadline:
                raise TimeoutError(f"flow run {flow_run_id} still {run.state_name} after {timeout:.0f} s")
            await asyncio.sleep(1)


async def read_table_artifact(api_url: str, key: str):
    from prefect.client.orchestration import PrefectClient
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    async with PrefectClient(api_url) as client:
        return await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))


@pytest.mark.timeout(600)
def test_deploy_all_then_a_worker_runs_the_ingest_deployment(tmp_path):
    from storage.phantoms import write_phantoms
    from storage.store import ZarrStore

    port = servers.free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    prefect_home = tmp_path / "prefect-home"
    env = isolated_environment(prefect_home, api_url, tmp_path / "mvg-home")
    source = write_phantoms("segmentation", tmp_path / DATASET, cases=2, seed=0, size=32, slices=8)
    store = tmp_path / "store"
    server_command = [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port), "--no-ui"]
    worker_command = [PREFECT, "worker", "start", "--pool", "mvg-process", "--name", "test-worker", "--limit", "1"]
    timings = {}
    started = time.monotonic()
    try:
        with servers.server_process(server_command, tmp_path / "server.log", env=env) as server:
            servers.wait_for_http(f"{api_url}/health", server, tmp_path / "server.log", timeout=180)
            timings["server"] = time.monotonic() - started

            create_pools(env)
            deploy = run([PREFECT, "--no-prompt", "deploy", "--all"], env)
            timings["deploy"] = time.monotonic() - started
            assert "successfully created" in deploy
            deployed = check_deployed(api_url)

            counts = asyncio.run(fire_train_triggers(api_url, deployed))
            assert counts == {"evaluate-after-train": 1, "evaluate-after-train-cluster": 1}, counts
            timings["triggers"] = time.monotonic() - started

            with servers.server_process(worker_command, tmp_path / "worker.log", env=env):
                output = run(
                    [PREFECT, "deployment", "run", INGEST, "--param", f"source={source}", "--param", f"store={store}",
                     "--param", "workers=1", "--param", "size=32"],
                    env,
                )
                flow_run_id = re.search(r"UUID: ([0-9a-f-]{36})", output).group(1)
                try:
                    flow_run = asyncio.run(wait_for_flow_run(api_url, flow_run_id, timeout=300))
                except TimeoutError as error:
                    raise AssertionError(f"{error}\nworker log:\n{(tmp_path / 'worker.log').read_text()[-5000:]}") from None
            timings["ingest"] = time.monotonic() - started

            worker_log = (tmp_path / "worker.log").read_text()
            assert flow_run.state.is_completed(), f"{flow_run.state}\nworker log:\n{worker_log[-5000:]}"
            assert flow_run.deployment_id == deployed["ingest-nightly"].id
            assert flow_run.parameters["source"] == str(source) and flow_run.parameters["workers"] == 1
            artifacts = asyncio.run(read_table_artifact(api_url, f"ingest-{DATASET}"))
            assert [a.type for a in artifacts] == ["table"]
            assert artifacts[0].flow_run_id == flow_run.id
            rows = json.loads(artifacts[0].data) if isinstance(artifacts[0].data, str) else artifacts[0].data
            assert len(rows) == 2, rows  # one row per case
            assert len(ZarrStore(store).dataset(DATASET).cases()) == 2
    finally:
        left = servers.stop_processes_with_environment("PREFECT_HOME", str(prefect_home))
        print("timings (s from start):", {k: round(v, 1) for k, v in timings.items()}, f"total {time.monotonic() - started:.1f}")
    assert not left, "processes outlived the server and the worker:\n" + "\n".join(left)
