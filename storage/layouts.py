"""Dataset layouts: find the cases of a dataset folder and what files make each one.

Three layouts are understood:
- nnU-Net v2 raw: `dataset.json`, `imagesTr/{case}_{XXXX}{ending}`, `labelsTr/{case}{ending}`,
  optional `imagesTs/` (+ `labelsTs/`), or explicit per-case paths under the `dataset` key;
- MSD `TaskNN_*`: `dataset.json` with `training` / `test` lists of 4-D NIfTI files;
- a manifest (CSV or JSON) of rows `case, image, target, split` plus reader keys, for everything
  else (DICOM folders, PNG, HDF5, .mat, .npy, MHA/NRRD).

A layout only plans: it never reads pixels. Rows that cannot be planned (a path escaping the
dataset folder, a malformed row) become `CaseProblem`s so that one bad case never stops the rest.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from storage.specs import DatasetSpec, get_spec


class LayoutError(ValueError):
    """The dataset folder as a whole cannot be understood (not one case of it)."""


FLIP_AXES = ("z", "y", "x")


@dataclass(frozen=True)
class SourceFile:
    """One image or label of a case, and how to read it.

    slice_axis: which axis of the file holds the slices (`storage.readers.read_scan`): of an HDF5 /
    .mat / .npy array, default 0 ((D, H, W), the SSL4MIS ACDC volumes), 2 for (H, W, D) releases;
    of a NIfTI / DICOM / MHA file, an (x, y, z) file axis kept as slices (2: the acquisition planes
    of an oblique stack), default None: closest canonical axial planes.
    stack: files (2-D slices, or thicker) stacked along z in this order into one volume; `path` is
    then the first of them. ACDC's training slices come as one file per slice.
    flip: axes ("z", "y", "x") of the read array to reverse, for files without geometry whose
    release is known to store them flipped (AMOS slices of SAM-Med2D's demo: table at the top).
    """

    path: str
    key: str | None = None  # HDF5 dataset, .mat variable or .npz entry
    channel: int | None = None  # channel of a multi-channel (4-D) file
    slice_axis: int | None = None
    stack: tuple[str, ...] = ()
    flip: tuple[str, ...] = ()

    def __post_init__(self):
        if self.slice_axis is not None and not -3 <= self.slice_axis <= 2:
            raise ValueError(f"slice_axis {self.slice_axis} is not an axis of a 3-D array (0, 1, 2, or -1 .. -3)")
        unknown = sorted(set(self.flip) - set(FLIP_AXES))
        if unknown:
            raise ValueError(f"flip axes {unknown} are not among {', '.join(FLIP_AXES)}")
        if self.stack and self.path != self.stack[0]:
            raise ValueError(f"a stacked source's path is its first file ({self.stack[0]}), not {self.path}")

    def paths(self) -> tuple[str, ...]:
        return self.stack or (self.path,)

    def reading(self) -> str:
        """The read options that change what a file's bytes become ("" when all are defaults):
        part of a case's checksum, so that a changed option re-ingests the case."""
        options = {"slice_axis": self.slice_axis} if self.slice_axis is not None else {}
        options.update({"flip": "".join(self.flip)} if self.flip else {})
        return ",".join(f"{k}={v}" for k, v in options.items())


@dataclass(frozen=True)
class CaseSource:
    """The files of one case. `channels` are the input channels in order; the spec says which is
    the input and which the target. The label is one file, or binary masks merged into one map."""

    case: str
    split: str
    channels: tuple[SourceFile, ...]
    label: SourceFile | None = None
    label_parts: tuple[tuple[int, SourceFile], ...] = ()  # (class value, binary mask file)

    def sources(self) -> list[SourceFile]:
        return [*self.channels, *([self.label] if self.label else []), *(f for _, f in self.label_parts)]

    def files(self) -> list[str]:
        return list(dict.fromkeys(path for f in self.sources() for path in f.paths()))

    def reading(self) -> str:
        """Non-default read options of its files, in file order ("" when none)."""
        options = [f"{f.path}:{f.reading()}" for f in self.sources() if f.reading()]
        return ";".join(options)

    @property
    def has_label(self) -> bool:
        return self.label is not None or bool(self.label_parts)


@dataclass(frozen=True)
class CaseProblem:
    case: str
    reason: str


@dataclass
class DatasetPlan:
    spec: DatasetSpec
    root: Path
    cases: list[CaseSource]
    problems: list[CaseProblem] = field(default_factory=list)
    declared_labels: dict[int, str] | None = None  # from dataset.json; None when the source declares none


def plan_dataset(
    source: str | Path, spec: DatasetSpec | str | None = None, root: str | Path | None = None
) -> DatasetPlan:
    """Find the layout of `source` (a folder or a manifest file) and list its cases.

    `root`: for a manifest, the folder its files must stay inside and its paths start from, in
    place of the manifest's own folder (`mvg ingest --root`): a manifest kept elsewhere that
    describes a data folder.
    """
    source = Path(source)
    if isinstance(spec, str):
        spec = get_spec(spec)
    if not source.exists():
        raise LayoutError(f"{source}: no such file or folder")
    if source.is_file():
        if source.suffix.lower() not in (".csv", ".json"):
            raise LayoutError(f"{source}: a dataset is a folder or a manifest (.csv / .json)")
        if source.name == "dataset.json":
            return plan_dataset(source.parent, spec, root)
        return plan_manifest(source, spec, root)
    manifests = [source / name for name in ("manifest.json", "manifest.csv") if (source / name).is_file()]
    if manifests:
        return plan_manifest(manifests[0], spec, root)
    if root is not None:  # the other layouts read their own folder: a wider root would only loosen that
        raise LayoutError(f"{source}: a root applies to a manifest only; this folder has none")
    dataset_json = source / "dataset.json"
    if dataset_json.is_file():
        description = _load_json(dataset_json)
        if "training" in description:
            return plan_msd(source, description, spec)
        return plan_nnunet(source, description, spec)
    from storage.recipes import RECIPES, recipe_hint  # recipes plan with this module's layouts

    if spec is not None and spec.name in RECIPES:  # the public release, as published
        return RECIPES[spec.name].plan(source, spec)
    if (source / "imagesTr").is_dir():
        return plan_nnunet(source, {}, spec)
    raise LayoutError(
        f"{source}: not a dataset folder: expected dataset.json (nnU-Net v2 or MSD), imagesTr/, "
        f"or a manifest.json / manifest.csv{recipe_hint(source)}"
    )


def _load_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise LayoutError(f"{path}: not valid JSON ({error})") from error


def inside(root: Path, relative: str) -> Path:
    """Resolve `relative` under `root`; refuse paths that escape it (`../`, absolute, symlinks out)."""
    resolved = (root / relative).resolve()
    if not resolved.is_relative_to(root.resolve()):
        raise ValueError(f"path {relative!r} escapes the dataset folder {root}")
    return resolved


# --------------------------------------------------------------------------------- spec choice


def _spec_from_description(root: Path, description: dict, layout: str, spec: DatasetSpec | None) -> DatasetSpec:
    """The spec a dataset is ingested with: the user's, else its `mvg` block, else nnU-Net fields."""
    overrides = dict(description.get("mvg", {}))
    unknown = sorted(set(overrides) - set(DatasetSpec.__dataclass_fields__))
    if unknown:
        raise LayoutError(f"{root / 'dataset.json'}: unknown keys in its mvg block: {', '.join(unknown)}")
    if spec is not None:
        return spec
    channel_names = description.get("channel_names") or description.get("modality") or {}
    first_channel = str(next(iter(channel_names.values()), "")) if channel_names else ""
    modality = overrides.pop("modality", "CT" if first_channel.upper() == "CT" else (first_channel or "MRI"))
    return DatasetSpec(
        name=overrides.pop("name", _dataset_name(root)),
        title=overrides.pop("title", description.get("name", root.name)),
        region=overrides.pop("region", "unknown"),
        modality=modality,
        task=overrides.pop("task", "segmentation"),
        layout=layout,
        classes=declared_labels(description) or {},
        normalisation=overrides.pop("normalisation", "ct" if modality.upper() == "CT" else "percentile"),
        **overrides,
    )


def _dataset_name(root: Path) -> str:
    """nnU-Net's Dataset123_Name / MSD's Task04_Name become `name` in lower case."""
    name = re.sub(r"^(Dataset\d+_|Task\d+_)", "", root.name)
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "dataset"


def declared_labels(description: dict) -> dict[int, str] | None:
    """Foreground labels declared by an nnU-Net v2 (`name: value`) or MSD (`"value": name`) json."""
    labels = description.get("labels")
    if not labels:
        return None
    declared: dict[int, str] = {}
    for key, value in labels.items():
        if isinstance(value, bool):
            raise LayoutError(f"dataset.json: label {key!r} has the value {value!r}, not an integer")
        if isinstance(value, list):  # nnU-Net v2 region-based: {"whole tumour": [1, 2, 3]}
            for member in value:
                declared.setdefault(int(member), str(key))
        elif isinstance(value, int) or (isinstance(value, str) and value.isdigit() and not str(key).isdigit()):
            declared[int(value)] = str(key)  # nnU-Net v2: {"liver": 1}
        elif str(key).isdigit():
            declared[int(key)] = str(value)  # MSD: {"1": "liver"}
        else:
            raise LayoutError(f"dataset.json: label {key!r}: {value!r} is neither name->value nor value->name")
    declared.pop(0, None)
    return declared


def assign_splits(cases: list[str], test_fraction: float) -> dict[str, str]:
    """A stable train/test split for layouts that have none: the same case always lands on the
    same side, whatever machine or order, and at least one case is held out when there are two."""
    ranked = sorted(cases, key=lambda c: hashlib.blake2b(c.encode(), digest_size=8).hexdigest())
    n_test = min(len(cases) - 1, max(1, math.floor(len(cases) * test_fraction + 0.5))) if len(cases) > 1 else 0
    test = set(ranked[:n_test])
    return {case: "test" if case in test else "train" for case in cases}


# --------------------------------------------------------------------------------- nnU-Net v2

CHANNEL_FILE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


def plan_nnunet(root: Path, description: dict, spec: DatasetSpec | None) -> DatasetPlan:
    spec = _spec_from_description(root, description, "nnunet", spec)
    ending = description.get("file_ending") or _guess_ending(root / "imagesTr")
    plan = DatasetPlan(spec, root, [], declared_labels=declared_labels(description))
    if "dataset" in description:  # explicit per-case paths (nnU-Net v2 `dataset` key)
        explicit = []
        for case, entry in sorted(description["dataset"].items()):
            try:
                channels = tuple(SourceFile(str(inside(root, p))) for p in entry["images"])
                label = SourceFile(str(inside(root, entry["label"]))) if entry.get("label") else None
                explicit.append(CaseSource(case, "train", channels, label))
            except (KeyError, TypeError, ValueError) as error:
                plan.problems.append(CaseProblem(case, f"dataset.json entry: {error}"))
        plan.cases = _with_splits(explicit, spec)
        return plan
    train = _nnunet_folder(root / "imagesTr", root / "labelsTr", ending, "train", plan)
    test = _nnunet_folder(root / "imagesTs", root / "labelsTs", ending, "test", plan)
    if test and not any(c.has_label for c in test) and spec.target_channel is None:
        test = []  # unlabelled test images cannot be evaluated; hold out labelled training cases instead
    plan.cases = test + (train if test else _with_splits(train, spec))
    return plan


def _guess_ending(folder: Path) -> str:
    for ending in (".nii.gz", ".nii", ".mha", ".nrrd", ".png", ".tif", ".bmp", ".jpg"):
        if folder.is_dir() and any(p.name.endswith(ending) for p in folder.iterdir()):
            return ending
    raise LayoutError(f"{folder}: no image files found (and dataset.json gives no file_ending)")


def _nnunet_folder(images: Path, labels: Path, ending: str, split: str, plan: DatasetPlan) -> list[CaseSource]:
    if not images.is_dir():
        return []
    channels: dict[str, dict[int, Path]] = {}
    for path in sorted(images.iterdir()):
        if path.name.startswith(".") or not path.name.endswith(ending):
            continue
        stem = path.name[: -len(ending)]
        match = CHANNEL_FILE.match(stem)
        case, channel = (match["case"], int(match["channel"])) if match else (stem, 0)
        channels.setdefault(case, {})[channel] = path
    cases = []
    for case, files in sorted(channels.items()):
        if sorted(files) != list(range(len(files))):
            plan.problems.append(CaseProblem(case, f"{images}: channel files {sorted(files)} are not 0..{len(files) - 1}"))
            continue
        label = labels / f"{case}{ending}"
        needs_label = plan.spec.label_role != "ignore"
        has_labels_folder = labels.is_dir()
        cases.append(
            CaseSource(
                case,
                split,
                tuple(SourceFile(str(files[c])) for c in range(len(files))),
                # a missing label file is kept as a path so that the case fails naming it
                SourceFile(str(label)) if (label.exists() or (needs_label and (has_labels_folder or split == "train"))) else None,
            )
        )
    return cases


def _with_splits(cases: list[CaseSource], spec: DatasetSpec) -> list[CaseSource]:
    splits = assign_splits([c.case for c in cases], spec.test_fraction)
    return [CaseSource(c.case, splits[c.case], c.channels, c.label, c.label_parts) for c in cases]


# --------------------------------------------------------------------------------- MSD


def plan_msd(root: Path, description: dict, spec: DatasetSpec | None) -> DatasetPlan:
    spec = _spec_from_description(root, description, "msd", spec)
    plan = DatasetPlan(spec, root, [], declared_labels=declared_labels(description))
    cases = []
    for entry in description.get("training", []):
        image = entry.get("image", "") if isinstance(entry, dict) else ""
        case = Path(image).name.removesuffix(".gz").removesuffix(".nii") or "?"
        if Path(image).name.startswith("._"):
            continue  # macOS resource forks shipped inside the MSD tarballs
        try:
            image_path = inside(root, image)
            label_path = inside(root, entry["label"])
        except (KeyError, ValueError) as error:
            plan.problems.append(CaseProblem(case, f"dataset.json training entry: {error}"))
            continue
        cases.append(CaseSource(case, "train", (SourceFile(str(image_path)),), SourceFile(str(label_path))))
    plan.cases = _with_splits(cases, spec)
    return plan


# --------------------------------------------------------------------------------- manifest

MANIFEST_COLUMNS = (
    "case", "image", "target", "split", "mask", "image_key", "target_key", "mask_key", "root", "slice_axis",
)


def plan_manifest(path: Path, spec: DatasetSpec | None, root: str | Path | None = None) -> DatasetPlan:
    """Rows of `case, image, target, split` (+ `mask` for inpainting, `*_key` reader options).

    Every file must stay inside the manifest's folder, or inside `root` when the caller gives one
    (`mvg ingest --root DIR`): only the person running the ingest widens what it may read, never
    the manifest. Rows' paths are relative to that folder, or to a narrower one: a JSON manifest is
    either a list of rows or `{"cases": [...], ...spec fields..., "root": DIR}`, and a row may name
    its own `root` (a CSV has no header to carry one); these start at the manifest's folder and
    must lie inside the allowed one.
    `target` may also be `{class name: binary mask file, or a list of them}` (a list when one class
    comes as several instance masks), merged into one label map by `classes`; where masks overlap,
    the higher class value wins. In a JSON manifest, `image` and `target` may be lists of files
    (2-D slices) stacked along z in the order given. `slice_axis` says which axis of the row's files
    holds the slices: 2 for HDF5 / .npy volumes stored (H, W, D) (default 0), or 2 for a NIfTI whose
    acquisition planes should stay the slices (default: closest canonical axial planes).
    """
    header: dict = {}
    if path.suffix.lower() == ".csv":
        with path.open(newline="") as file:
            rows = list(csv.DictReader(file))
    else:
        content = _load_json(path)
        rows = content if isinstance(content, list) else content.get("cases", [])
        header = {} if isinstance(content, list) else {k: v for k, v in content.items() if k != "cases"}
    allowed = Path(root).resolve() if root is not None else path.parent.resolve()
    try:
        base = _manifest_root(path, header.pop("root"), allowed) if "root" in header else allowed
    except ValueError as error:  # every row would read there: the manifest as a whole is refused
        raise LayoutError(f"{path}: {error}") from None
    spec = _manifest_spec(path, header, spec)
    plan = DatasetPlan(spec, base, [], declared_labels=dict(spec.classes) if header.get("classes") else None)
    names = {name: value for value, name in spec.classes.items()}
    unsplit = []
    for number, row in enumerate(rows, start=1):
        case = str(row.get("case") or f"row{number}")
        try:
            unknown = sorted(set(row) - set(MANIFEST_COLUMNS))
            if unknown:  # a misspelt column would otherwise be ignored silently
                raise ValueError(f"unknown column(s) {', '.join(map(str, unknown))}; known: {', '.join(MANIFEST_COLUMNS)}")
            row_root = _manifest_root(path, row["root"], allowed) if row.get("root") else base
            plan.cases.append(_manifest_case(row_root, case, row, spec, names))
        except (KeyError, ValueError, TypeError) as error:
            plan.problems.append(CaseProblem(case, f"{path.name} row {number}: {error}"))
            continue
        if not row.get("split"):
            unsplit.append(case)
    if unsplit:
        splits = assign_splits(unsplit, spec.test_fraction)
        plan.cases = [
            CaseSource(c.case, splits.get(c.case, c.split), c.channels, c.label, c.label_parts) for c in plan.cases
        ]
    return plan


def _manifest_root(path: Path, value, allowed: Path) -> Path:
    """A manifest's or a row's `root`, from the manifest's folder; it may narrow the folder the
    manifest may read, never widen it (a row's root "/" once let "etc/passwd" through)."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"root {value!r} is not a folder name")
    resolved = (path.parent / value).resolve()
    if not resolved.is_relative_to(allowed):
        raise ValueError(f"root {value!r} lies outside {allowed}, the folder this manifest may read")
    return resolved


IMAGE_TO_IMAGE_TASKS = ("synthesis", "denoising", "inpainting")


def _manifest_spec(path: Path, header: dict, spec: DatasetSpec | None) -> DatasetSpec:
    spec_fields = {k: v for k, v in header.items() if k in DatasetSpec.__dataclass_fields__}
    if "classes" in spec_fields:
        spec_fields["classes"] = {int(k): v for k, v in spec_fields["classes"].items()}
    if "label_map" in spec_fields:
        spec_fields["label_map"] = {int(k): int(v) for k, v in spec_fields["label_map"].items()}
    if spec_fields.get("rescale") is not None:
        spec_fields["rescale"] = tuple(spec_fields["rescale"])
    if spec is None and "spec" in header:
        spec = get_spec(header["spec"])
    if spec_fields.get("task", spec.task if spec else None) in IMAGE_TO_IMAGE_TASKS:
        # A manifest row names the input and the target directly: they are channels 0 and 1. Given
        # with the task, not after: a spec is checked as it is made, and an image-to-image task
        # without a target channel is refused.
        spec_fields.update(input_channel=0, target_channel=1)
    try:
        return _spec_with(path, spec_fields, spec)
    except ValueError as error:  # a bad field value: name the manifest that gave it
        raise LayoutError(f"{path}: {error}") from None


def _spec_with(path: Path, spec_fields: dict, spec: DatasetSpec | None) -> DatasetSpec:
    """The given spec with the manifest's fields, or a new spec from them."""
    if spec is not None:
        return spec.with_overrides(layout="manifest", **spec_fields)
    modality = spec_fields.pop("modality", "MRI")
    return DatasetSpec(
        name=spec_fields.pop("name", _dataset_name(path.parent if path.stem == "manifest" else path.with_suffix(""))),
        title=spec_fields.pop("title", path.stem),
        region=spec_fields.pop("region", "unknown"),
        modality=modality,
        task=spec_fields.pop("task", "segmentation"),
        layout="manifest",
        normalisation=spec_fields.pop("normalisation", "ct" if str(modality).upper() == "CT" else "percentile"),
        **{k: v for k, v in spec_fields.items() if k not in ("layout",)},
    )


def _slice_axis(row: dict) -> int | None:
    value = row.get("slice_axis")
    if value in (None, ""):
        return None
    if isinstance(value, bool) or not str(value).strip().lstrip("-").isdigit():
        raise ValueError(f"slice_axis {value!r} is not an integer axis (0, 1, 2 or -1)")
    return int(value)


def _manifest_file(root: Path, value, key: str | None, slice_axis: int | None) -> SourceFile:
    """A row's file: a path, or a list of paths stacked along z."""
    if isinstance(value, list):
        if not value or not all(isinstance(v, str) and v for v in value):
            raise ValueError(f"a list of files to stack must hold file names, not {value!r}")
        stack = tuple(str(inside(root, v)) for v in value)
        return SourceFile(stack[0], key, slice_axis=slice_axis, stack=stack)
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a file name")
    return SourceFile(str(inside(root, value)), key, slice_axis=slice_axis)


def _manifest_case(root: Path, case: str, row: dict, spec: DatasetSpec, class_values: dict[str, int]) -> CaseSource:
    if not row.get("image"):
        raise ValueError("has no image")
    axis = _slice_axis(row)
    image = _manifest_file(root, row["image"], row.get("image_key") or None, axis)
    target = row.get("target")
    split = str(row.get("split") or "train").lower()
    if split not in ("train", "test", "val"):
        raise ValueError(f"split {split!r} is not train, test or val")
    if spec.target_channel is not None:  # image-to-image: the target is the second channel
        if not target:
            raise ValueError(f"a {spec.task} row needs a target image")
        channels = (image, _manifest_file(root, target, row.get("target_key") or None, axis))
        mask = _manifest_file(root, row["mask"], row.get("mask_key") or None, axis) if row.get("mask") else None
        if spec.label_role == "mask" and mask is None:
            raise ValueError("an inpainting row needs a mask")
        return CaseSource(case, split, channels, mask)
    if isinstance(target, dict):  # one binary mask per class
        parts = []
        for name, mask_paths in target.items():
            if name not in class_values:
                raise ValueError(f"class {name!r} is not among the manifest's classes ({', '.join(class_values)})")
            for mask_path in [mask_paths] if isinstance(mask_paths, str) else mask_paths:
                parts.append((class_values[name], _manifest_file(root, mask_path, None, axis)))
        # Merged in class order, so a nested structure given a higher value (grey matter inside the
        # cord) survives whatever its name; name order would let "spinal cord" paint over "grey matter".
        parts.sort(key=lambda part: part[0])
        return CaseSource(case, split, (image,), None, tuple(parts))
    label = _manifest_file(root, target, row.get("target_key") or None, axis) if target else None
    return CaseSource(case, split, (image,), label)
