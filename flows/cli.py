"""The `mvg` command: the outer face of the pipeline (contract: docs/architecture.md, "CLI contract").

Every command has `--help`; errors go to stderr with a non-zero exit status.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
from importlib import metadata
from pathlib import Path

from flows.lifetime import children_stopped_if_killed
from flows.machine_output import json_output
from flows.predict import add_predict_parser
from flows.prefect_home import keep_runs_under
from mvg.names import CANDIDATE, CHAMPION, EVALUATION_EXPERIMENT, FINETUNED, REGISTERED_MODEL, alias_uri
from storage.home import mvg_home, store_root


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.home:
        os.environ["MVG_HOME"] = str(args.home)
    keep_runs_under(mvg_home())  # before anything imports Prefect, which reads its home at import
    try:
        check_tracking_server(args)  # before any server starts: MLflow's own retries take minutes
        # argv None: the command line is this process's own (`mvg ...`), not main() called inside
        # another program, so whatever it started is stopped at its exit however it ends
        with children_stopped_if_killed(also_after_a_normal_end=argv is None):
            return args.run(args)
    except (FileNotFoundError, KeyError, ValueError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"mvg {args.command}: error: {message}", file=sys.stderr)
        return 2


# commands that read or write the tracking server whatever their arguments; predict does so only
# for a registry or run URI
TRACKING_COMMANDS = ("train", "evaluate", "promote", "finetune", "ablate", "demo")


def check_tracking_server(args) -> None:
    """An http(s) tracking server that does not answer is one line naming its URI."""
    if args.command == "predict":
        needed = str(args.model).startswith(("models:/", "runs:/"))
    else:
        needed = args.command in TRACKING_COMMANDS
    if not needed:
        return
    from mvg.tracking import TrackingServerUnreachable, check_reachable, tracking_uri

    try:
        check_reachable(tracking_uri())
    except TrackingServerUnreachable as error:
        raise ValueError(str(error)) from None  # reported like any other bad setting


HOME_HELP = "data root: store, MLflow, Ray checkpoints, Prefect runs, reports (default: $MVG_HOME, else ./mvg-home)"


def package_version() -> str:
    try:
        return metadata.version("mvg-pipeline")
    except metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


class CommandParser(argparse.ArgumentParser):
    """A subcommand's parser: it also takes `--home`, so `mvg train --home X` works as
    `mvg --home X train` does. Left out there, it leaves the value given before the command alone
    (argparse would otherwise overwrite it with the subcommand's default)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.add_argument("--home", type=Path, default=argparse.SUPPRESS, help=HOME_HELP)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mvg", description="Medical Vision Generalist pipeline")
    parser.add_argument("--home", type=Path, help=HOME_HELP)
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}", help="print the version and exit")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=CommandParser)

    datasets = commands.add_parser("datasets", help="list built-in dataset specs")
    datasets.add_argument("--json", action="store_true", help="print the specs as JSON")
    datasets.set_defaults(run=run_datasets)

    phantoms = commands.add_parser("phantoms", help="write a synthetic dataset in nnU-Net v2 layout")
    phantoms.add_argument("--task", required=True, choices=_phantom_tasks(), help="the task the phantoms pose")
    phantoms.add_argument("--cases", type=int, help="cases to write")
    phantoms.add_argument("--seed", type=int, help="seed of the random shapes (the same seed writes the same cases)")
    phantoms.add_argument("--size", type=int, help="in-plane size in pixels")
    phantoms.add_argument("--slices", type=int, help="slices per volume (3-D tasks)")
    phantoms.add_argument("--out", type=Path, required=True, help="dataset folder to write (DIR/dataset.json)")
    phantoms.set_defaults(run=run_phantoms)

    ingest = commands.add_parser("ingest", help="ingest a dataset folder or manifest into the Zarr store")
    ingest.add_argument("source", type=Path, help="nnU-Net v2 / MSD folder, or a manifest (.csv/.json)")
    ingest.add_argument("--spec", help="built-in dataset spec to read it with (see `mvg datasets`)")
    ingest.add_argument("--store", help="store root, a folder or s3://bucket/prefix (default: $MVG_STORE, else $MVG_HOME/store)")
    ingest.add_argument("--workers", type=int, help="Dask worker processes (one case each)")
    ingest.add_argument("--dask-address", help="existing Dask scheduler, e.g. tcp://host:8786")
    ingest.add_argument("--size", type=int, help="in-plane store size (default: the paper's)")
    ingest.add_argument("--name", help="dataset name in the store (default: the spec's)")
    ingest.add_argument("--input-channel", type=int, help="channel of multi-channel cases used as input")
    ingest.add_argument("--target-channel", type=int, help="channel used as target (synthesis, denoising)")
    ingest.add_argument("--root", type=Path, help="folder a manifest's paths start from and must stay inside (default: the manifest's folder)")
    ingest.set_defaults(run=run_ingest)

    real = commands.add_parser("real-store", help="ingest every public release found in a data folder (recipes: mvg datasets)")
    real.add_argument("--data", type=Path, required=True, help="folder holding the releases (acdc/, jsrt/, ldct-mayo/ ...)")
    real.add_argument("--store", help="store root, a folder or s3://bucket/prefix (default: $MVG_HOME/real-store)")
    real.add_argument("--size", type=int, help="in-plane store size")
    real.add_argument("--workers", type=int, help="Dask worker processes (one case each)")
    real.add_argument("--dask-address", help="existing Dask scheduler, e.g. tcp://host:8786")
    real.add_argument("--datasets", nargs="+", metavar="SPEC", help="only these recipes (default: every release found)")
    real.add_argument("--derived", type=Path, help="folder for files derived from the releases (default: <store>-derived beside the store)")
    real.set_defaults(run=run_real_store)

    store = commands.add_parser("store", help="summarise the datasets in the Zarr store")
    store.add_argument("--store", help="store root, a folder or s3://bucket/prefix (default: $MVG_STORE, else $MVG_HOME/store)")
    store.add_argument("--json", action="store_true", help="print the summary as JSON")
    store.add_argument("--preview", type=Path, metavar="DIR", help="also write a PNG montage per dataset to DIR")
    store.add_argument("--verify", action="store_true",
                       help="instead, read every shard and check its index, slice checksums and shape; list the broken ones (exit 1 if any)")
    store.add_argument("--datasets", nargs="+", metavar="D", help="with --verify: only these datasets (default: all)")
    store.set_defaults(run=run_store)

    train = commands.add_parser("train", help=f"train on the store with Ray Train; register model `{REGISTERED_MODEL}` as @{CANDIDATE}")
    train.add_argument("--preset", help="config preset: tiny-cpu, base, large")
    train.add_argument("--store", help="store root, a folder or s3://bucket/prefix (default: $MVG_STORE, else $MVG_HOME/store)")
    train.add_argument("--ray-storage", help="Ray Train's checkpoints, a shared folder or s3://bucket/prefix (default: $MVG_RAY_STORAGE, else $MVG_HOME/ray)")
    train.add_argument("--workers", type=int, help="Ray Train workers (one DDP rank each)")
    train.add_argument("--gpus-per-worker", type=float, help="GPUs per worker, a fraction shares one (default: none)")
    train.add_argument("--cpus-per-worker", type=int, help="default: this machine's cores / workers")
    train.add_argument("--max-steps", type=int, help="optimizer steps of the run (the schedule's length)")
    train.add_argument("--stop-at", type=int, help="stop early at this step; the same --run-name goes on later")
    train.add_argument("--run-name", help="MLflow and Ray run name; an existing one resumes (default: preset-time)")
    train.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                       help="config override, e.g. --set optim.lr=3e-4 --set model.depth=6 (repeatable)")
    train.add_argument("--checkpoint-every", type=int, help="steps between checkpoints (the most a failure loses)")
    train.add_argument("--log-every", type=int, help="steps between MLflow metric rows and progress lines on stderr")
    train.add_argument("--sample-every", type=int, help="steps between sample-prediction images; 0: none")
    add_json_argument(train, "the run, its steps, final metrics, loss curves and registered model")
    train.set_defaults(run=run_train)

    evaluate = commands.add_parser("evaluate", help="score a model against the baselines on the store's test cases (paper Tables 2 and 3)")
    evaluate.add_argument("--model", help=f"registry URI, MLflow model folder, weights folder or checkpoint (default: {alias_uri(CANDIDATE)})")
    evaluate.add_argument("--store", help="store root, a folder or s3://bucket/prefix (default: $MVG_STORE, else $MVG_HOME/store)")
    evaluate.add_argument("--datasets", nargs="+", metavar="D", help="stored datasets (default: every one with test cases)")
    evaluate.add_argument("--draws", type=int, help="prompt draws per dataset: mean and spread (paper reviewers)")
    evaluate.add_argument("--shots", type=int, help="prompt pairs per query (k-shot)")
    evaluate.add_argument("--seed", type=int, help="seed of the prompt draws")
    evaluate.add_argument("--max-cases", type=int, help="test cases per dataset (default: all)")
    evaluate.add_argument("--no-promote", dest="promote", action="store_false", default=None, help="do not move the champion alias")
    add_rule_arguments(evaluate)
    add_json_argument(evaluate, "tables, scores, baselines, failed cases, reports folder and the promotion decision")
    evaluate.set_defaults(run=run_evaluate)

    promote = commands.add_parser("promote", help=f"move @{CHAMPION} to an evaluated version if it beats its baselines and is as good as the champion")
    promote.add_argument("--model", help=f"registry URI of an evaluated version (default: {alias_uri(CANDIDATE)})")
    add_rule_arguments(promote)
    add_json_argument(promote, "the version, whether it was promoted, why, and the champion")
    promote.set_defaults(run=run_promote)

    finetune = commands.add_parser("finetune", help="adapt a registered model to a new dataset from a few cases; register a new version")
    finetune.add_argument("sources", nargs="+", metavar="SOURCE", help="a dataset in the store, or a dataset folder / manifest to ingest")
    finetune.add_argument("--model", help=f"the model to start from: registry URI, folder or checkpoint (default: {alias_uri(CHAMPION)})")
    finetune.add_argument("--store", help="store root, a folder or s3://bucket/prefix (default: $MVG_STORE, else $MVG_HOME/store)")
    finetune.add_argument("--cases", type=int, help="training cases per dataset (paper: one)")
    finetune.add_argument("--steps", type=int, help="optimizer steps of the fine-tuning")
    finetune.add_argument("--lr", type=float, help="peak learning rate (small: adapt, do not forget)")
    finetune.add_argument("--warmup-steps", type=int, help="steps of linear warm-up before the cosine decay")
    finetune.add_argument("--seed", type=int, help="seed of the episode draws")
    finetune.add_argument("--spec", help="built-in spec to ingest a SOURCE folder with")
    finetune.add_argument("--size", type=int, help="store in-plane size for an ingested SOURCE (default: the paper's)")
    finetune.add_argument("--run-name", help="MLflow run name (default: finetune-<datasets>-<time>)")
    finetune.add_argument("--alias", help=f"alias of the new version (default: {FINETUNED})")
    finetune.set_defaults(run=run_finetune)

    add_predict_parser(commands)

    ablate = commands.add_parser("ablate", help="compare the variants of a study (paper Tables 4-7, Figure 7) at an equal budget on Ray Tune")
    ablate.add_argument("--study", required=True, choices=_studies(),
                        help="colouring, unified, objective, data-scale, or custom (a --variants file)")
    ablate.add_argument("--variants", type=Path, metavar="FILE", help="--study custom: YAML or JSON of named override sets (README, 'Ablations')")
    ablate.add_argument("--preset", help="config preset every variant starts from (default: tiny-cpu)")
    ablate.add_argument("--store", help="store root, a folder or s3://bucket/prefix (default: $MVG_STORE, else $MVG_HOME/store)")
    budget = ablate.add_mutually_exclusive_group()
    budget.add_argument("--budget-minutes", type=float, metavar="M", help="training minutes per variant, turned into one step count for all")
    budget.add_argument("--steps", type=int, metavar="N", help="training steps per variant (default: the preset's)")
    ablate.add_argument("--datasets", nargs="+", metavar="D", help="stored datasets to train on and compare (default: all)")
    ablate.add_argument("--seeds", type=int, metavar="K", help="trainings per variant: mean ± std over seeds (default: 1)")
    ablate.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override for every variant (repeatable)")
    ablate.add_argument("--workers", type=int, help="Ray Train workers per trial (default: 1)")
    ablate.add_argument("--gpus-per-worker", type=float, help="GPUs per worker, a fraction shares one (default: none)")
    ablate.add_argument("--cpus-per-worker", type=int, help="default: this machine's cores / workers")
    ablate.add_argument("--concurrent", type=int, help="trials at once (default: as many as the cluster has room for)")
    ablate.add_argument("--retries", type=int, help="Tune's retries of a failed trial (default: 1)")
    ablate.add_argument("--draws", type=int, help="prompt draws per dataset in the evaluation (default: 1)")
    ablate.add_argument("--max-cases", type=int, help="test cases per dataset (default: all)")
    ablate.add_argument("--register", nargs="?", const="best", metavar="VARIANT",
                        help="register this variant's model (alone: the best variant's) as models:/mvg@candidate; default: nothing")
    ablate.add_argument("--run-name", help="MLflow parent run and Ray experiment name (default: ablation-<study>-<time>)")
    ablate.add_argument("--ray-storage", help="Ray's checkpoints (default: $MVG_RAY_STORAGE, else $MVG_HOME/ray)")
    ablate.set_defaults(run=run_ablate)

    demo = commands.add_parser("demo", help="the pipeline on phantoms: ingest -> train on Ray -> evaluate -> promote")
    demo.add_argument("--cases", type=int, help="phantom cases per task (default: 8)")
    demo.add_argument("--size", type=int, help="phantom and store in-plane size (default: 64, tiny-cpu's)")
    demo.add_argument("--workers", type=int, help="Dask workers for ingest")
    length = demo.add_mutually_exclusive_group()
    length.add_argument("--minutes", type=float, metavar="M",
                        help="training budget in wall-clock minutes, calibration included: the steps that fit it here, "
                             "never fewer than the floor the demo needs to beat its baselines (default: 17)")
    length.add_argument("--steps", type=int, help="train exactly this many steps instead of a time budget")
    demo.add_argument("--fresh", action="store_true", default=None, help="start over: delete the demo's earlier results first")
    demo.set_defaults(run=run_demo)
    return parser


def _studies() -> tuple[str, ...]:
    from mvg.studies import STUDY_NAMES

    return STUDY_NAMES


def _phantom_tasks() -> tuple[str, ...]:
    from storage.phantoms import PHANTOM_TASKS

    return PHANTOM_TASKS


def run_datasets(args) -> int:
    from storage.recipes import RECIPES
    from storage.specs import BUILTIN_SPECS

    if args.json:
        print(json.dumps({name: spec.to_dict() for name, spec in BUILTIN_SPECS.items()}, indent=1))
        return 0
    rows = [
        (s.name, s.region, s.modality, s.task, s.layout, str(len(s.classes)), s.normalisation, _cases(s.paper_cases),
         f"{RECIPES[s.name].folder}/" if s.name in RECIPES else "-")
        for s in BUILTIN_SPECS.values()
    ]
    print_table(("name", "region", "modality", "task", "layout", "classes", "norm", "paper train/test", "release folder"), rows)
    return 0


def _cases(cases: tuple[int, int] | None) -> str:
    return f"{cases[0]}/{cases[1]}" if cases else "-"


def run_phantoms(args) -> int:
    from tqdm.auto import tqdm

    from storage.phantoms import write_phantoms

    chosen = given(cases=args.cases, seed=args.seed, size=args.size, slices=args.slices)
    cases = chosen.get("cases", signature_default(write_phantoms, "cases"))
    with tqdm(total=cases, unit="case", desc=f"phantoms {args.task}") as bar:
        out = write_phantoms(args.task, args.out, **chosen, progress=lambda done: bar.update(done - bar.n))
    print(f"wrote {cases} {args.task} case(s) to {out}")
    return 0


def run_ingest(args) -> int:
    from flows.ingest import ingest_flow

    state = ingest_flow(
        str(args.source), progress=True, return_state=True,
        **given(spec=args.spec, store=args.store, workers=args.workers, dask_address=args.dask_address, size=args.size,
                name=args.name, input_channel=args.input_channel, target_channel=args.target_channel,
                root=str(args.root) if args.root else None),
    )
    summary = state.result(raise_on_failure=False)
    if not isinstance(summary, dict):  # the flow itself crashed (bad folder, unknown spec ...)
        print(f"mvg ingest: error: {summary}", file=sys.stderr)
        return 2
    print_table(("case", "split", "slices", "classes", "status", "reason"), [tuple(map(str, r.values())) for r in summary["rows"]])
    print(f"{summary['dataset']}: {summary['ingested']} ingested, {summary['skipped']} unchanged, {summary['failed']} failed -> {summary['directory']}")
    return 1 if summary["failed"] else 0


def run_real_store(args) -> int:
    from storage.recipes import build_real_store
    from storage.store import ZarrStore

    store = args.store or str(mvg_home() / "real-store")
    try:
        built = build_real_store(
            args.data, store, address=args.dask_address, datasets=args.datasets, derived=args.derived,
            **given(size=args.size, workers=args.workers),
        )
    except RuntimeError as error:  # failed cases, listed; the other datasets are in the store
        print(f"mvg real-store: {error}", file=sys.stderr)
        return 1
    rows = []
    for name, task in built.items():
        dataset = ZarrStore(store).dataset(name)
        rows.append((name, task, str(len(dataset.cases("train"))), str(len(dataset.cases("test")))))
    print_table(("dataset", "task", "train", "test"), rows)
    print(f"{len(built)} dataset(s) in {store}")
    return 0


def parse_overrides(assignments: list[str], max_steps: int | None = None) -> dict[str, dict]:
    """["optim.lr=3e-4", "model.depth=6"] -> {"optim": {"lr": 0.0003}, "model": {"depth": 6}}; values
    are read as JSON where they parse (numbers, booleans, lists), else kept as strings, then checked
    against the config's fields: an unknown key or a value of the wrong type (model.depth=2.5) is
    refused here, naming both, not in a Ray worker and each of its restarts."""
    from mvg.overrides import check_overrides

    overrides: dict[str, dict] = {}
    for assignment in assignments:
        key, equals, raw = assignment.partition("=")
        section, dot, name = key.partition(".")
        if not equals or not dot or not name:
            raise ValueError(f"--set {assignment!r}: expected SECTION.KEY=VALUE, e.g. optim.lr=3e-4")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        overrides.setdefault(section, {})[name] = value
    if max_steps is not None:
        overrides.setdefault("optim", {})["steps"] = max_steps
    return check_overrides(overrides, "--set ")


def run_train(args) -> int:
    overrides = parse_overrides(args.set, args.max_steps)  # before importing Prefect, Ray and torch (seconds)
    from flows.train import train_flow
    from mvg.config import preset

    chosen_preset = args.preset or signature_default(train_flow, "preset")
    workers = args.workers or signature_default(train_flow, "workers")
    cpus = args.cpus_per_worker or max(1, (os.cpu_count() or 1) // workers)
    try:
        preset(chosen_preset).with_overrides(**overrides)  # refuse a bad override before any server starts
    except (TypeError, AttributeError) as error:  # a section or field the config does not have
        raise ValueError(f"--set: {error}") from None
    with json_output(args.json) as result:
        summary = train_flow(
            preset=chosen_preset, overrides=overrides, workers=workers, cpus_per_worker=cpus,
            **given(store=args.store, gpus_per_worker=args.gpus_per_worker, run_name=args.run_name, stop_at=args.stop_at,
                    checkpoint_every=args.checkpoint_every, log_every=args.log_every, sample_every=args.sample_every,
                    storage=args.ray_storage),
        )
        if summary.get("loss_curves"):
            print(f"loss curves: {summary['loss_curves']}")
        if "model_uri" in summary:
            print(f"registered {summary['model_name']} version {summary['model_version']}: {summary['model_uri']}")
        result(summary)
    return 0


def run_ablate(args) -> int:
    from mvg.ablation import plan

    request = given(
        preset=args.preset, store=args.store, variants_file=str(args.variants) if args.variants else None,
        overrides=parse_overrides(args.set), datasets=args.datasets, seeds=args.seeds, steps=args.steps,
        budget_minutes=args.budget_minutes,
    )
    plan(args.study, **request, register=args.register)  # refuse a bad study, file or override before Prefect or Ray start
    from flows.ablate import ablation_flow, report

    summary = ablation_flow(args.study, **request, **given(
        workers=args.workers, gpus_per_worker=args.gpus_per_worker, cpus_per_worker=args.cpus_per_worker,
        concurrent=args.concurrent, retries=args.retries, draws=args.draws, max_cases=args.max_cases,
        register_variant=args.register, run_name=args.run_name, storage=args.ray_storage,
    ))
    print(report(summary))
    return 1 if summary["failed"] else 0


def add_json_argument(parser: argparse.ArgumentParser, holding: str) -> None:
    parser.add_argument("--json", action="store_true", default=None,
                        help=f"print one JSON object as the last line of stdout ({holding}); everything else goes to stderr")


def add_rule_arguments(parser: argparse.ArgumentParser) -> None:
    from mvg.promotion import RULES

    parser.add_argument("--rule", choices=RULES,
                        help="every: beats its baselines on every dataset and is as good as the champion on every shared one; "
                             "mean: on the mean of the differences")
    parser.add_argument("--tolerance", type=float, help="allowed loss to the champion in the metric's units (mIoU, dB); none to the baselines")


def run_evaluate(args) -> int:
    from flows.evaluate import evaluate_flow

    with json_output(args.json) as result:
        summary = evaluate_flow(progress=True, **given(
            model_uri=args.model, store=args.store, datasets=args.datasets, draws=args.draws, shots=args.shots,
            seed=args.seed, max_cases=args.max_cases, promote=args.promote, rule=args.rule, tolerance=args.tolerance,
        ))
        print_results(summary)
        result(summary)
    return 1 if summary["failed"] else 0


def print_results(summary: dict) -> None:
    """The evaluation's tables, the test cases that could not be read, then where they are kept
    and what promotion decided."""
    from mvg.evaluation import to_markdown

    titles = {"table2": "Segmentation, mIoU (paper Table 2)", "table3": "Image-to-image tasks (paper Table 3)"}
    for name, rows in summary["tables"].items():
        if rows:
            print(f"\n{titles.get(name, name)}\n{to_markdown(rows)}")
    failed = summary.get("failed", [])
    if failed:
        print(f"\n{len(failed)} test case(s) failed, not scored (mvg store --verify lists every damaged shard):")
        for row in failed:
            print(f"  {row['reason']}")
    print(f"\nevaluation run: {summary['run_id']} (experiment {EVALUATION_EXPERIMENT})")
    for montage in summary.get("montages", []):
        print(f"montage: {montage}")
    if "promoted" in summary:
        verdict = f"promoted to @{CHAMPION}" if summary["promoted"] else "not promoted"
        print(f"version {summary['version']}: {verdict} ({summary['reason']})")


def run_promote(args) -> int:
    from flows.promote import promote_flow

    with json_output(args.json) as result:
        decision = promote_flow(**given(model_uri=args.model, rule=args.rule, tolerance=args.tolerance))
        print(f"version {decision['version']}: {'promoted to @' + CHAMPION if decision['promoted'] else 'not promoted'} ({decision['reason']})")
        result(decision)
    return 0


def run_finetune(args) -> int:
    from flows.finetune import finetune_flow

    summary = finetune_flow(
        sources=[str(source) for source in args.sources],
        **given(model_uri=args.model, store=args.store, cases=args.cases, steps=args.steps, lr=args.lr,
                warmup_steps=args.warmup_steps, seed=args.seed, spec=args.spec, size=args.size, run_name=args.run_name,
                alias=args.alias),
    )
    chosen = "; ".join(f"{dataset}: {', '.join(cases)}" for dataset, cases in summary["cases"].items())
    print(f"fine-tuned {summary['parent']} on {chosen}")
    if summary.get("loss_curves"):
        print(f"loss curves: {summary['loss_curves']}")
    print(f"registered {summary['model_uri']} (alias @{summary['alias']}); evaluate it: mvg evaluate --model {summary['model_uri']} --datasets {' '.join(summary['cases'])}")
    return 0


def run_store(args) -> int:
    from storage.store import ZarrStore

    root = args.store or store_root()
    if args.verify:
        return run_verify(root, args.datasets)
    summary = ZarrStore(root).summary()
    if args.json:
        print(json.dumps(summary, indent=1))
        return 0
    print(f"store {root}")
    rows = [
        (s["dataset"], s["task"], s["modality"], str(s["cases"]), " ".join(f"{k}={v}" for k, v in sorted(s["splits"].items())), str(s["slices"]), " ".join(map(str, s["classes"])))
        for s in summary
    ]
    print_table(("dataset", "task", "modality", "cases", "splits", "slices", "classes"), rows)
    if args.preview:
        from storage.preview import write_previews

        for path in write_previews(root, args.preview):
            print(f"preview: {path}")
    return 0


def run_verify(root: str, datasets: list[str] | None) -> int:
    """Every broken shard on a line of its own, naming dataset/case/role, the slice and the file."""
    from storage.verify import verify_store

    check = verify_store(root, datasets)
    for shard in check.broken:
        for problem in shard.problems:
            print(problem)
    print(check.summary())
    return 1 if check.broken else 0


def run_demo(args) -> int:
    """The pipeline flow on phantoms of every task, then where everything is and how to look at it."""
    home = mvg_home()
    from flows.pipeline import pipeline_flow
    from mvg.mlflow_ui import LOCAL_UI, served, ui_command
    from storage.preview import write_previews

    summary = pipeline_flow(progress=True, **given(
        cases=args.cases, size=args.size, steps=args.steps, minutes=args.minutes, ingest_workers=args.workers, fresh=args.fresh,
    ))
    previews = write_previews(summary["store"], home / "previews")
    print_results({"tables": summary["tables"], "run_id": summary["evaluation_run_id"], "montages": summary["montages"], **summary["promotion"]})
    uri = summary["tracking_uri"]
    print(f"\nstore:            {summary['store']}  (previews: {previews[0].parent if previews else '-'})")
    print(f"open a case:      napari --plugin napari-ome-zarr {summary['store']}/<dataset>.zarr/<case>/image")
    print(f"loss curves:      {summary['loss_curves'] or '-'}")
    print(f"MLflow tracking:  {uri}")
    print(f"registered model: {summary['training']['model_uri']} ({alias_uri(CANDIDATE)})")
    if not served(uri):
        print(f"MLflow UI:        {ui_command(uri)}  # then open {LOCAL_UI}")
    if "PREFECT_API_URL" not in os.environ:
        print(f"Prefect UI:       PREFECT_HOME={os.environ['PREFECT_HOME']} prefect server start  # then open http://127.0.0.1:4200")
    failed = sum(counts["failed"] for counts in summary["ingested"].values())
    return 1 if failed else 0


def given(**options) -> dict:
    """The options the command line was given: a flag left out is None and is not passed on, so the
    flow's (or function's) own signature supplies its default, in one place."""
    return {name: value for name, value in options.items() if value is not None}


def signature_default(function, parameter: str):
    """The default `function` (a flow or a plain function) declares for `parameter`, where the
    command needs the value itself."""
    return inspect.signature(function).parameters[parameter].default


def print_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(str(v)) for v in column) for column in zip(header, *rows)]
    for row in (header, tuple("-" * w for w in widths), *rows):
        print("  ".join(str(v).ljust(w) for v, w in zip(row, widths)).rstrip())


if __name__ == "__main__":
    sys.exit(main())
