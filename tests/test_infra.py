"""Offline checks of infra/: the deployment files must agree with the tools that read them (Ray's
cluster schema, the `mvg` CLI, Prefect's work-pool validation) and with each other (image, volume,
service URLs) and with pyproject.toml (requirement specifiers). No network, docker or kubectl."""

from __future__ import annotations

import ast
import configparser
import copy
import importlib.util
import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
CLUSTER_YAML = INFRA / "ray" / "cluster.yaml"
RAYCLUSTER = INFRA / "kuberay" / "raycluster.yaml"
RAYJOB = INFRA / "kuberay" / "rayjob.yaml"
STORAGE = INFRA / "kuberay" / "storage.yaml"
COMPOSE = INFRA / "mlflow" / "docker-compose.yaml"
WORKER_DOCKERFILE = INFRA / "docker" / "Dockerfile"
LOCK = ROOT / "requirements.lock"
MLFLOW_DOCKERFILE = INFRA / "mlflow" / "Dockerfile"
JOB_TEMPLATE = INFRA / "prefect" / "mvg-cluster.base-job-template.json"
WORKER_VALUES = INFRA / "prefect" / "worker-values.yaml"
SYSTEMD_UNIT = INFRA / "prefect" / "mvg-process-worker.service"
POOLS = {"mvg-process": "process", "mvg-cluster": "kubernetes"}

# pip packaging tools may be upgraded without a specifier; everything else must be a project dependency.
TOOLING = {"pip", "setuptools", "wheel"}
PIP_OPTIONS_WITH_VALUE = {
    "-i", "--index-url", "--extra-index-url", "-f", "--find-links", "-c", "--constraint",
    "-r", "--requirement", "-t", "--target", "--prefix", "--root", "--upgrade-strategy",
}


# ---------------------------------------------------------------- helpers


def load_one(path: Path) -> dict:
    (document,) = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    return document


def project_requirements() -> dict[str, Requirement]:
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return {canonicalize_name(r.name): r for r in map(Requirement, dependencies)}


def requirement_files(command: str) -> list[str]:
    """The files `pip install -r FILE` installs from in a shell command."""
    tokens = shlex.split(command, comments=False, posix=True)
    return [tokens[i + 1] for i, token in enumerate(tokens[:-1]) if token in ("-r", "--requirement")]


def pip_install_targets(command: str) -> list[str]:
    """Positional arguments of every `pip install` in a shell command: requirements, '.', paths.
    `-e X` counts as a target (an editable project)."""
    tokens = shlex.split(command, comments=False, posix=True)
    targets: list[str] = []
    i = 0
    while i < len(tokens):
        is_pip = tokens[i].rsplit("/", 1)[-1] in ("pip", "pip3") or tokens[i : i + 2] == ["-m", "pip"]
        step = 2 if tokens[i : i + 2] == ["-m", "pip"] else 1
        if is_pip and i + step < len(tokens) and tokens[i + step] == "install":
            i += step + 1
            while i < len(tokens) and tokens[i] not in ("&&", "||", ";", "|", ")"):
                token = tokens[i]
                if token in ("-e", "--editable"):
                    targets.append(tokens[i + 1])
                    i += 2
                elif token in PIP_OPTIONS_WITH_VALUE:
                    i += 2
                elif token.startswith("-"):
                    i += 1
                else:
                    targets.append(token.rstrip(")"))
                    i += 1
        else:
            i += 1
    return targets


def is_project_path(target: str) -> bool:
    return target.startswith((".", "/", "~", "$"))


def specifier_problems(targets: list[str], project: dict[str, Requirement]) -> list[str]:
    """Requirements named in an install line that differ from pyproject.toml's (or are not in it)."""
    problems = []
    for target in targets:
        if is_project_path(target):
            continue
        requirement = Requirement(target)
        name = canonicalize_name(requirement.name)
        if name in TOOLING:
            continue
        expected = project.get(name)
        if expected is None:
            problems.append(f"{target!r}: not a dependency in pyproject.toml")
        elif requirement.specifier != expected.specifier or requirement.extras != expected.extras:
            problems.append(f"{target!r}: pyproject.toml says {str(expected)!r}")
    return problems


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    instructions = []
    for line in joined.splitlines():
        if line.strip():
            keyword, _, arguments = line.strip().partition(" ")
            instructions.append((keyword.upper(), arguments.strip()))
    return instructions


def dockerfile_args(text: str) -> dict[str, str]:
    return dict(a.partition("=")[::2] for k, a in dockerfile_instructions(text) if k == "ARG" and "=" in a)


def compose_default(value: str) -> str:
    """Resolve ${VAR:-default} / ${VAR-default} / ${VAR} the way compose does with VAR unset."""
    return re.sub(r"\$\{[A-Z0-9_]+(?::?-([^}]*))?\}", lambda m: m.group(1) or "", value)


def containers(pod_template: dict) -> list[dict]:
    return pod_template["spec"]["containers"]


def cluster_spec(kind: str) -> dict:
    document = load_one(RAYCLUSTER if kind == "RayCluster" else RAYJOB)
    return document["spec"] if kind == "RayCluster" else document["spec"]["rayClusterSpec"]


def cpu_count(quantity: str | int) -> float:
    text = str(quantity)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def ray_schema() -> dict:
    # Found without importing ray (seconds), and always the schema of the Ray that is installed.
    ray_dir = Path(importlib.util.find_spec("ray").submodule_search_locations[0])
    return json.loads((ray_dir / "autoscaler" / "ray-schema.json").read_text())


def mvg_ray_env_keys() -> set[str]:
    """Keys of mvg.distributed.RAY_ENV, read from the source so torch and ray need not be imported."""
    tree = ast.parse((ROOT / "mvg" / "distributed.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "RAY_ENV" for t in node.targets):
            return set(ast.literal_eval(node.value))
    raise AssertionError("RAY_ENV not found in mvg/distributed.py")


# ---------------------------------------------------------------- every file


def infra_files(*suffixes: str) -> list[Path]:
    return sorted(p for p in INFRA.rglob("*") if p.is_file() and p.suffix in suffixes)


@pytest.mark.parametrize("path", infra_files(".yaml", ".yml"), ids=lambda p: str(p.relative_to(INFRA)))
def test_every_yaml_file_parses(path):
    documents = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert documents and all(isinstance(d, dict) for d in documents)


@pytest.mark.parametrize("path", infra_files(".json"), ids=lambda p: str(p.relative_to(INFRA)))
def test_every_json_file_parses(path):
    assert isinstance(json.loads(path.read_text()), dict)


def test_no_infra_file_names_this_checkout():
    leaks = [p for p in INFRA.rglob("*") if p.is_file() and str(ROOT) in p.read_text(errors="ignore")]
    assert not leaks, f"machine-specific paths in {leaks}"


# ---------------------------------------------------------------- Ray cluster launcher


def test_cluster_yaml_validates_against_rays_bundled_schema():
    jsonschema.validate(load_one(CLUSTER_YAML), ray_schema())


def test_cluster_yaml_passes_rays_own_config_checks():
    # What `ray up` runs before it touches the cloud: defaults merged in, schema and cross-field checks.
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(load_one(CLUSTER_YAML)))
    validate_config(prepared)
    assert prepared["head_node_type"] in prepared["available_node_types"]


@pytest.mark.parametrize(
    "breakage",
    [
        lambda c: c["available_node_types"]["gpu_a10g"].pop("resources"),
        lambda c: c["available_node_types"]["gpu_a10g"]["resources"].update(GPU="1"),
        lambda c: c.update(setup_command=c["setup_commands"]),
    ],
    ids=["node type without resources", "GPU count as a string", "misspelt top-level key"],
)
def test_schema_rejects_a_broken_cluster_yaml(breakage):
    broken = copy.deepcopy(load_one(CLUSTER_YAML))
    breakage(broken)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, ray_schema())


def test_cluster_yaml_has_a_cpu_head_and_autoscaled_gpu_workers():
    config = load_one(CLUSTER_YAML)
    types = config["available_node_types"]
    assert not types[config["head_node_type"]]["resources"].get("GPU")
    gpu_types = {name: t for name, t in types.items() if t["resources"].get("GPU", 0) >= 1}
    assert gpu_types, "no GPU worker type"
    for node_type in gpu_types.values():
        assert 0 <= node_type["min_workers"] <= node_type["max_workers"] <= config["max_workers"]


def test_cluster_yaml_installs_the_mounted_project_with_pyprojects_specifiers():
    config = load_one(CLUSTER_YAML)
    home = f"/home/{config['auth']['ssh_user']}"
    targets = [t for command in config["setup_commands"] for t in pip_install_targets(command)]
    projects = [t.replace("~", home, 1) for t in targets if is_project_path(t)]
    assert any(config["file_mounts"].get(p) == "." for p in projects), (projects, config["file_mounts"])
    assert specifier_problems(targets, project_requirements()) == []
    assert any(t.startswith("torch") for t in targets), "torch for CUDA is installed before the project"


def test_cluster_nodes_share_mvg_home_and_start_ray_with_the_environment():
    config = load_one(CLUSTER_YAML)
    setup = "\n".join(config["setup_commands"])
    home = re.search(r"export MVG_HOME=(\S+?)'", setup).group(1)
    assert re.search(rf"mount -t nfs4 .* {re.escape(home)}\b", setup), "MVG_HOME must be a shared mount"
    assert "export MLFLOW_TRACKING_URI=http" in setup
    for command in config["head_start_ray_commands"] + config["worker_start_ray_commands"]:
        assert command.startswith("source ~/.mvg-env")


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_cluster_yaml_commands_are_valid_bash():
    config = load_one(CLUSTER_YAML)
    keys = ("setup_commands", "head_setup_commands", "worker_setup_commands", "head_start_ray_commands", "worker_start_ray_commands")
    for command in (c for key in keys for c in config.get(key, [])):
        result = subprocess.run(["bash", "-n", "-c", command], capture_output=True, text=True)
        assert result.returncode == 0, (command, result.stderr)


# ---------------------------------------------------------------- KubeRay


def test_kuberay_manifests_have_the_expected_kinds():
    assert {(d["apiVersion"], d["kind"]) for d in map(load_one, (RAYCLUSTER, RAYJOB))} == {
        ("ray.io/v1", "RayCluster"), ("ray.io/v1", "RayJob"),
    }
    storage = {d["kind"]: d for d in yaml.safe_load_all(STORAGE.read_text())}
    assert storage["PersistentVolumeClaim"]["spec"]["accessModes"] == ["ReadWriteMany"]


@pytest.mark.parametrize("kind", ["RayCluster", "RayJob"])
def test_ray_pods_run_the_worker_image_and_mount_the_shared_claim(kind):
    spec = cluster_spec(kind)
    claim = {d["kind"]: d for d in yaml.safe_load_all(STORAGE.read_text())}["PersistentVolumeClaim"]["metadata"]["name"]
    image = json.loads(JOB_TEMPLATE.read_text())["variables"]["properties"]["image"]["default"]
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    for group in groups:
        pod = group["template"]
        volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
        for container in containers(pod):
            assert container["image"] == image
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            assert volumes[mounts["/mnt/mvg"]]["persistentVolumeClaim"]["claimName"] == claim
            assert set(mounts.values()) <= set(volumes)
    assert any(int(c["resources"]["limits"].get("nvidia.com/gpu", 0)) >= 1
               for g in spec["workerGroupSpecs"] for c in containers(g["template"]))


def rayjob_entrypoint():
    from flows.cli import build_parser

    argv = shlex.split(load_one(RAYJOB)["spec"]["entrypoint"])
    assert argv[0] == "mvg"
    return build_parser().parse_args(argv[1:])


def test_rayjob_entrypoint_is_a_valid_mvg_train_command_on_the_shared_volume():
    args = rayjob_entrypoint()
    assert args.command == "train"
    assert args.gpus_per_worker > 0 and args.run_name, "a GPU run with a fixed name, so re-applying resumes"
    # The store must be one every pod sees: the shared volume, or an object store (tests/test_s3_store.py)
    assert str(args.store).startswith(("/mnt/mvg/", "s3://"))


def test_rayjob_entrypoint_fits_its_worker_pods():
    args = rayjob_entrypoint()
    (group,) = cluster_spec("RayJob")["workerGroupSpecs"]
    (container,) = containers(group["template"])
    limits = container["resources"]["limits"]
    pod_gpus = int(limits["nvidia.com/gpu"])
    assert args.gpus_per_worker <= pod_gpus
    assert args.cpus_per_worker <= cpu_count(limits["cpu"])
    ranks_per_pod = int(pod_gpus // args.gpus_per_worker)
    assert args.workers <= group["replicas"] * ranks_per_pod, "the run would wait forever for GPUs"


def test_rayjob_runtime_env_reaches_mlflow_and_does_not_clash_with_mvgs_own():
    runtime_env = yaml.safe_load(load_one(RAYJOB)["spec"]["runtimeEnvYAML"])
    env = runtime_env["env_vars"]
    assert all(isinstance(v, str) for v in env.values()), "Ray needs string values"
    assert env["MLFLOW_TRACKING_URI"].startswith("http")
    assert env["MVG_HOME"] == "/mnt/mvg"
    # Ray refuses a job whose runtime env and the driver's ray.init(runtime_env=...) share a key.
    assert not set(env) & mvg_ray_env_keys()


def test_services_agree_across_kuberay_and_the_prefect_pool():
    template_env = json.loads(JOB_TEMPLATE.read_text())["variables"]["properties"]["env"]["default"]
    cluster = load_one(RAYCLUSTER)
    head = containers(cluster["spec"]["headGroupSpec"]["template"])[0]
    head_env = {e["name"]: e["value"] for e in head["env"]}
    job_env = yaml.safe_load(load_one(RAYJOB)["spec"]["runtimeEnvYAML"])["env_vars"]
    assert template_env["MLFLOW_TRACKING_URI"] == head_env["MLFLOW_TRACKING_URI"] == job_env["MLFLOW_TRACKING_URI"]
    assert template_env["MVG_HOME"] == head_env["MVG_HOME"] == job_env["MVG_HOME"]
    # KubeRay names the head service <cluster>-head-svc; 10001 is the Ray Client port.
    name, namespace = cluster["metadata"]["name"], cluster["metadata"]["namespace"]
    assert template_env["RAY_ADDRESS"] == f"ray://{name}-head-svc.{namespace}.svc.cluster.local:10001"
    assert 10001 in {p["containerPort"] for p in head["ports"]}


# ---------------------------------------------------------------- MLflow server


def test_compose_runs_mlflow_on_postgres_and_s3():
    services = load_one(COMPOSE)["services"]
    assert {"postgres", "minio", "minio-init", "mlflow"} <= set(services)
    command = services["mlflow"]["command"]
    assert command[:2] == ["mlflow", "server"]
    option = dict(zip(command[2:], command[3:]))
    assert option["--backend-store-uri"].startswith("postgresql://")
    assert "@postgres:5432/" in option["--backend-store-uri"]
    assert option["--artifacts-destination"].startswith("s3://")
    assert option["--host"] == "0.0.0.0"
    assert "--serve-artifacts" in command, "clients must not need S3 credentials"
    assert services["mlflow"]["environment"]["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    bucket = compose_default(option["--artifacts-destination"]).removeprefix("s3://").split("/")[0]
    assert compose_default(services["minio-init"]["environment"]["MLFLOW_BUCKET"]) == bucket


def test_compose_services_are_healthchecked_and_started_in_order():
    services = load_one(COMPOSE)["services"]
    for name in ("postgres", "minio", "mlflow"):
        assert services[name]["healthcheck"]["test"], name
    assert services["mlflow"]["depends_on"] == {
        "postgres": {"condition": "service_healthy"},
        "minio-init": {"condition": "service_completed_successfully"},
    }
    assert services["minio-init"]["depends_on"] == {"minio": {"condition": "service_healthy"}}


def test_compose_publishes_ports_on_loopback_by_default():
    services = load_one(COMPOSE)["services"]
    published = [compose_default(p) for s in services.values() for p in s.get("ports", [])]
    assert published and all(p.startswith("127.0.0.1:") for p in published), published
    assert "ports" not in services["postgres"]


def test_mlflow_server_version_satisfies_the_projects_requirement():
    version = dockerfile_args(MLFLOW_DOCKERFILE.read_text())["MLFLOW_VERSION"]
    assert Version(version) in project_requirements()["mlflow"].specifier
    assert Version(version) == locked_versions()["mlflow"], "the tracking server and the workers' client run one MLflow"


# ---------------------------------------------------------------- worker image


def test_dockerfile_pip_specifiers_match_pyproject():
    runs = [a for k, a in dockerfile_instructions(WORKER_DOCKERFILE.read_text()) if k == "RUN"]
    targets = [t for run in runs for t in pip_install_targets(run)]
    assert "." in targets, targets
    assert specifier_problems(targets, project_requirements()) == []


def locked_versions() -> dict[str, Version]:
    """requirements.lock: canonical name -> the pinned version."""
    pins = {}
    for line in LOCK.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            requirement = Requirement(line)
            (pin,) = requirement.specifier
            assert pin.operator == "==", line
            pins[canonicalize_name(requirement.name)] = Version(pin.version)
    return pins


def test_dockerfile_installs_the_lock_then_the_project_without_dependencies():
    runs = [a for k, a in dockerfile_instructions(WORKER_DOCKERFILE.read_text()) if k == "RUN"]
    lock = next(i for i, r in enumerate(runs) if requirement_files(r) == ["requirements.lock"])
    project = next(i for i, r in enumerate(runs) if "." in pip_install_targets(r))
    assert lock < project and "--no-deps" in shlex.split(runs[project]), "the project must add nothing the lock did not pin"
    explicit = [t for run in runs for t in pip_install_targets(run) if not is_project_path(t)]
    assert {canonicalize_name(Requirement(t).name) for t in explicit} <= TOOLING, explicit


def test_the_lock_pins_every_dependency_within_pyprojects_specifiers():
    pins = locked_versions()
    for name, requirement in project_requirements().items():
        assert name in pins, f"{name} is a dependency but not in requirements.lock: run make lock"
        assert pins[name] in requirement.specifier, f"requirements.lock pins {name}=={pins[name]}, pyproject.toml says {requirement}"


def test_ray_is_pinned_to_kuberays_ray_version_everywhere():
    versions = {
        "raycluster.yaml rayVersion": load_one(RAYCLUSTER)["spec"]["rayVersion"],
        "rayjob.yaml rayVersion": load_one(RAYJOB)["spec"]["rayClusterSpec"]["rayVersion"],
        "requirements.lock": str(locked_versions()["ray"]),
    }
    (pin,) = project_requirements()["ray"].specifier
    versions["pyproject.toml"] = pin.version if pin.operator == "==" else str(pin)
    assert len(set(versions.values())) == 1, versions


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ('pip install "torch>=2.5" "torchvision>=0.19"', "pyproject.toml says 'torch>=2.4'"),
        ('pip install "torch==2.13.0"', "pyproject.toml says 'torch>=2.4'"),
        ('pip install "ray[train]==2.60.0"', "pyproject.toml says 'ray[default,train]==2.60.0'"),
        ('pip install "cupy>=13"', "not a dependency"),
    ],
)
def test_specifier_check_catches_drift(line, problem):
    (found,) = specifier_problems(pip_install_targets(line), project_requirements())
    assert problem in found


def test_dockerfile_builds_on_cuda_and_the_lock_brings_torchs_cuda_libraries():
    text = WORKER_DOCKERFILE.read_text()
    instructions = dockerfile_instructions(text)
    assert dockerfile_args(text)["CUDA_IMAGE"].startswith("nvidia/cuda:")
    assert ("FROM", "${CUDA_IMAGE}") in instructions
    pins = locked_versions()
    assert {"torch", "torchvision"} <= set(pins)
    assert any(name.startswith("nvidia-") for name in pins), "the locked torch is a CUDA build (nvidia-* wheels)"


def test_dockerfile_copies_only_what_the_dockerignore_lets_through():
    ignored = {line.strip() for line in (INFRA / "docker" / "Dockerfile.dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    for keyword, arguments in dockerfile_instructions(WORKER_DOCKERFILE.read_text()):
        if keyword == "COPY":
            for source in arguments.split()[:-1]:
                assert (ROOT / source).exists(), source
                assert source.split("/")[0] not in ignored, source


# ---------------------------------------------------------------- Prefect workers


def test_base_job_template_passes_prefects_work_pool_validation():
    from prefect.server.schemas.actions import WorkPoolCreate

    template = json.loads(JOB_TEMPLATE.read_text())
    WorkPoolCreate(name="mvg-cluster", type="kubernetes", base_job_template=template)
    broken = copy.deepcopy(template)
    broken["job_configuration"]["job_manifest"]["metadata"]["namespace"] = "{{ namespce }}"
    with pytest.raises(ValueError, match="namespce"):
        WorkPoolCreate(name="mvg-cluster", type="kubernetes", base_job_template=broken)


def test_base_job_template_keeps_prefects_kubernetes_contract():
    # The worker reads the job configuration keys of Prefect's own template; deployments may set any
    # of its variables. Both must survive our edits.
    prefect_dir = Path(importlib.util.find_spec("prefect").submodule_search_locations[0])
    bundled = json.loads((prefect_dir / "server/api/collections_data/views/aggregate-worker-metadata.json").read_text())
    default = bundled["prefect-kubernetes"]["kubernetes"]["default_base_job_configuration"]
    template = json.loads(JOB_TEMPLATE.read_text())
    assert set(template["job_configuration"]) == set(default["job_configuration"])
    assert set(default["variables"]["properties"]) <= set(template["variables"]["properties"])
    variables = template["variables"]
    defaults = {k: v["default"] for k, v in variables["properties"].items() if "default" in v}
    jsonschema.validate(defaults, variables)


def test_base_job_template_renders_a_job_on_the_shared_volume():
    from prefect.utilities.templating import apply_values

    template = json.loads(JOB_TEMPLATE.read_text())
    defaults = {k: v["default"] for k, v in template["variables"]["properties"].items() if "default" in v}
    job = apply_values(template["job_configuration"], defaults)["job_manifest"]
    pod = job["spec"]["template"]["spec"]
    claim = {d["kind"]: d for d in yaml.safe_load_all(STORAGE.read_text())}["PersistentVolumeClaim"]
    assert job["metadata"]["namespace"] == claim["metadata"]["namespace"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    (container,) = pod["containers"]
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == defaults["env"]["MVG_HOME"]]
    assert volumes[mount["name"]]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    assert container["image"] == defaults["image"]


def test_workers_poll_the_fixed_pools():
    values = load_one(WORKER_VALUES)["worker"]["config"]
    assert (values["workPool"], values["type"]) == ("mvg-cluster", POOLS["mvg-cluster"])
    unit = configparser.ConfigParser(interpolation=None, strict=False)
    unit.optionxform = str
    unit.read_string(SYSTEMD_UNIT.read_text())
    argv = shlex.split(unit["Service"]["ExecStart"])
    assert argv[0].endswith("/prefect") and argv[1:3] == ["worker", "start"]
    assert argv[argv.index("--pool") + 1] == "mvg-process"
    assert argv[argv.index("--type") + 1] == POOLS["mvg-process"]


def test_prefect_yaml_uses_only_pools_infra_provides():
    deployments = yaml.safe_load((ROOT / "prefect.yaml").read_text()).get("deployments") or []
    used = {d["work_pool"]["name"] for d in deployments if d.get("work_pool")}
    assert used <= set(POOLS), used - set(POOLS)
