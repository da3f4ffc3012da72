"""Recipes: public releases read exactly as they are published, one small function per release.

In the manner of nnU-Net's dataset conversion scripts, each recipe knows one download's folder
layout, file names, label values and split, and turns the folder into a `DatasetPlan` for the
built-in spec of the same name, so that one command ingests it:

    mvg ingest ~/downloads/jsrt --spec jsrt

`plan_dataset` hands a folder to its spec's recipe unless the folder holds a manifest or a
dataset.json. A recipe only lists files (it never reads pixels); a folder that is not the release
fails with one `LayoutError` naming the folder and what was expected; a case that cannot be planned
(a missing partner file) becomes a `CaseProblem` and the rest go on. `build_real_store` ingests
every release found under one data folder into one store (`mvg real-store`, `make real-store`).

One dataset of the real store is not the release alone. BraTS-Local (brats-inpainting/) publishes
one case, which cannot be both the prompt pool (train) and a held-out test case; in the real store
(`plan_brats_local_held_out`) that case, as published, is the test split, and the training case is
derived: the t1n of brats-synthesis/ (another subject, same SRI24 grid) voided under the BraTS-Local
mask, written by `storage.derived` beside the store (never into the data folder), the only recipe
step that reads pixels. `mvg ingest brats-inpainting/ --spec brats-local` reads the release alone.

| folder                | spec            | task         | split                                        |
| --------------------- | --------------- | ------------ | -------------------------------------------- |
| acdc/                 | acdc            | segmentation | slices/ stacked per patient+frame: train;    |
|                       |                 |              | volumes/: test                               |
| cmr-mscmrseg/         | cmr-mscmrseg    | segmentation | every fifth case (see `every_fifth`)         |
| jsrt/                 | jsrt            | segmentation | every fifth image                            |
| cxr/                  | cxr             | segmentation | train only                                   |
| ct-slices/            | ct-slices       | segmentation | train only                                   |
| ldct-mayo/            | ldct-mayo       | denoising    | by patient: every fifth patient is test      |
| ldct/                 | ldct            | denoising    | train only                                   |
| brats2013-deepmedic/  | brats2013       | synthesis    | train/ + validation/: train; test/: test     |
| brats-synthesis/      | brats-synthesis | synthesis    | every fifth case (one case: train)           |
| brats-inpainting/     | brats-local     | inpainting   | every fifth case (one case: train); in the   |
| (+ brats-synthesis/   |                 |              | real store the published case is test and    |
|  t1n, DERIVED)        |                 |              | train is DERIVED: brats-synthesis t1n voided |
|                       |                 |              | under its mask (`plan_brats_local_held_out`) |
| brats-edema/          | brats-edema     | segmentation | every fifth case (one case: train)           |
| sct/                  | sct             | segmentation | train only (one subject)                     |
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from storage.layouts import CaseProblem, CaseSource, DatasetPlan, LayoutError, SourceFile, inside, plan_nnunet
from storage.specs import DatasetSpec, get_spec

PICTURES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
EVERY_FIFTH = "every fifth case in natural name order, from the first, is test (20 %); a single case is train"


# --------------------------------------------------------------------------------- helpers


def natural_key(name: str) -> tuple:
    """`case_2` before `case_10`: digits compare as numbers."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name))


def every_fifth(names: Iterable[str]) -> dict[str, str]:
    """The split of releases that publish none: in natural name order the 1st, 6th, 11th, ... name
    is test (20 %, at least one of two or more), the rest train; a lone case is train. A rule a
    reader can apply by hand, unlike a hash, and stable for a given release."""
    ordered = sorted(set(names), key=natural_key)
    if len(ordered) < 2:
        return dict.fromkeys(ordered, "train")
    return {name: "test" if index % 5 == 0 else "train" for index, name in enumerate(ordered)}


def not_the_release(root: Path, spec: DatasetSpec, found: str) -> LayoutError:
    return LayoutError(f"{root}: not the {spec.title} release that spec {spec.name!r} reads: {found}; expected {spec.expected}")


def _visible(paths: Iterable[Path]) -> list[Path]:
    return sorted((p for p in paths if not p.name.startswith(".")), key=lambda p: natural_key(p.name))


def _resplit(plan: DatasetPlan, splits: dict[str, str]) -> DatasetPlan:
    plan.cases = [CaseSource(c.case, splits.get(c.case, c.split), c.channels, c.label, c.label_parts) for c in plan.cases]
    return plan


# --------------------------------------------------------------------------------- ACDC

ACDC_SLICE = re.compile(r"(?P<volume>patient\d+_frame\d+)_slice_(?P<k>\d+)\.h5")


def plan_acdc(root: Path, spec: DatasetSpec) -> DatasetPlan:
    """SSL4MIS ACDC: `slices/patientNNN_frameNN_slice_K.h5` (2-D `image`/`label`) are stacked by K
    into one volume per patient and frame, the training split (the prompt pool); the volumes in
    `volumes/*.h5` ((D, H, W) `image`/`label`) of other patients are the test split. A volume that
    the slices already give (same patient and frame) is not listed twice."""
    if (root / "imagesTr").is_dir():
        return plan_nnunet(root, {}, spec)
    slices, volumes = root / "slices", root / "volumes"
    slice_files = _visible(slices.glob("*.h5")) if slices.is_dir() else []
    volume_files = _visible(volumes.glob("*.h5")) if volumes.is_dir() else []
    if not slice_files and not volume_files:
        raise not_the_release(root, spec, "no slices/*.h5 or volumes/*.h5")
    plan = DatasetPlan(spec, root, [])
    stacks: dict[str, dict[int, Path]] = {}
    for path in slice_files:
        match = ACDC_SLICE.fullmatch(path.name)
        if match is None:
            plan.problems.append(CaseProblem(path.stem, f"{path}: not named patientNNN_frameNN_slice_K.h5"))
            continue
        stacks.setdefault(match["volume"], {})[int(match["k"])] = path
    for volume, parts in sorted(stacks.items()):
        ks = sorted(parts)
        missing = sorted(set(range(ks[0], ks[-1] + 1)) - set(ks))
        if missing:
            plan.problems.append(CaseProblem(volume, f"{slices}: slice(s) {missing} of {volume} are missing"))
            continue
        stack = tuple(str(parts[k]) for k in ks)
        image = SourceFile(stack[0], "image", stack=stack)
        plan.cases.append(CaseSource(volume, "train", (image,), SourceFile(stack[0], "label", stack=stack)))
    for path in volume_files:
        if path.stem not in stacks:
            plan.cases.append(CaseSource(path.stem, "test", (SourceFile(str(path), "image"),), SourceFile(str(path), "label")))
    return plan


# --------------------------------------------------------------------------------- MS-CMRSeg

MSCMR_IMAGE = re.compile(r"image_(?P<n>\d+)\.nii\.gz")


def plan_mscmrseg(root: Path, spec: DatasetSpec) -> DatasetPlan:
    """Q-Net's MS-CMRSeg bSSFP: `image_N.nii.gz` with `label_N.nii.gz` (values 200/500/600, mapped
    to the spec's classes 1/2/3 by its label_map); case `case_NN`, split `every_fifth`. The stacks
    are oblique short-axis cines: the file's third axis stays the slice axis (slice_axis 2), so each
    stored slice is an acquired short-axis plane, not a cut across the stack."""
    numbers = sorted(int(m["n"]) for p in root.iterdir() if (m := MSCMR_IMAGE.fullmatch(p.name)))
    if not numbers:
        raise not_the_release(root, spec, "no image_N.nii.gz files")
    names = {n: f"case_{n:02d}" for n in numbers}
    splits = every_fifth(names.values())
    plan = DatasetPlan(spec, root, [])
    for n, case in names.items():
        # a missing label stays a path, so that the case fails naming it
        image, label = root / f"image_{n}.nii.gz", root / f"label_{n}.nii.gz"
        plan.cases.append(
            CaseSource(case, splits[case], (SourceFile(str(image), slice_axis=2),), SourceFile(str(label), slice_axis=2))
        )
    return plan


# --------------------------------------------------------------------------------- chest X-rays


def plan_jsrt(root: Path, spec: DatasetSpec) -> DatasetPlan:
    """JSRT (247 radiographs): `images/JPC*.png` with `masks/` of the same names, one mask of values
    150 right lung, 200 left lung, 250 heart (the spec's label_map); split `every_fifth`."""
    images, masks = root / "images", root / "masks"
    if not images.is_dir() or not masks.is_dir():
        raise not_the_release(root, spec, "no images/ and masks/ folders")
    files = [p for p in _visible(images.iterdir()) if p.suffix.lower() in PICTURES]
    if not files:
        raise not_the_release(root, spec, "no pictures in images/")
    splits = every_fifth(p.stem for p in files)
    plan = DatasetPlan(spec, root, [])
    for path in files:
        plan.cases.append(CaseSource(path.stem, splits[path.stem], (SourceFile(str(path)),), SourceFile(str(masks / path.name))))
    return plan


def plan_cxr(root: Path, spec: DatasetSpec) -> DatasetPlan:
    """lung-segmentation-2d's sample: `N.jpg` radiographs with `N-mask.png` lung masks {0, 255}, the
    mask's foreground becoming class 1; all train (a handful of images, for training only)."""
    files = [p for p in _visible(root.iterdir()) if p.suffix.lower() in PICTURES and not p.stem.endswith("-mask")]
    if not files:
        raise not_the_release(root, spec, "no N.jpg radiographs")
    plan = DatasetPlan(spec, root, [])
    for path in files:
        case = f"cxr{path.stem}" if path.stem.isdigit() else path.stem
        mask = SourceFile(str(path.with_name(f"{path.stem}-mask.png")))
        plan.cases.append(CaseSource(case, "train", (SourceFile(str(path)),), None, ((1, mask),)))
    return plan


# --------------------------------------------------------------------------------- CT slices


def plan_ct_slices(root: Path, spec: DatasetSpec) -> DatasetPlan:
    """SAM-Med2D's data_demo: `image2label_train.json` (image -> its masks) and
    `label2image_test.json` (mask -> its image) name one binary mask per organ instance,
    `masks/<image>_<organ>_<NNN>.png`, merged into one label map by the spec's classes (organ token
    with spaces for underscores). Images without masks (the AMOS MR slice) are no case. The AMOS
    slices (`amos_*`) are stored upside down, table at the top: they are flipped upright, masks too.
    All train (five slices, for training only)."""
    listing = root / "image2label_train.json"
    if not listing.is_file():
        raise not_the_release(root, spec, "no image2label_train.json")
    masks_of: dict[str, list[str]] = {}
    for image, masks in _load(listing).items():
        masks_of.setdefault(_local(image), []).extend(_local(m) for m in masks)
    if (root / "label2image_test.json").is_file():
        for mask, image in _load(root / "label2image_test.json").items():
            masks_of.setdefault(_local(image), []).append(_local(mask))
    value_of = {name: value for value, name in spec.classes.items()}
    plan = DatasetPlan(spec, root, [])
    for image, masks in sorted(masks_of.items()):
        case = Path(image).stem
        flip = ("y",) if case.startswith("amos_") else ()
        try:
            parts = []
            for mask in sorted(set(masks)):
                match = re.fullmatch(rf"{re.escape(case)}_(?P<organ>.+)_\d{{3}}\.png", Path(mask).name)
                if match is None:
                    raise ValueError(f"mask {mask} is not named {case}_<organ>_<NNN>.png")
                organ = match["organ"].replace("_", " ")
                if organ not in value_of:
                    raise ValueError(f"mask {mask}: organ {organ!r} is not among the spec's classes")
                parts.append((value_of[organ], SourceFile(str(inside(root, mask)), flip=flip)))
            source = SourceFile(str(inside(root, image)), flip=flip)
        except ValueError as error:
            plan.problems.append(CaseProblem(case, f"{listing.name}: {error}"))
            continue
        if parts:
            plan.cases.append(CaseSource(case, "train", (source,), None, tuple(sorted(parts, key=lambda p: p[0]))))
    return plan


def _load(path: Path) -> dict:
    try:
        content = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise LayoutError(f"{path}: not valid JSON ({error})") from error
    if not isinstance(content, dict):
        raise LayoutError(f"{path}: expected an object mapping file names")
    return content


def _local(name: str) -> str:
    """`data_demo/images/x.png` -> `images/x.png`: the listings name the release's own top folder."""
    parts = Path(name).parts
    for index, part in enumerate(parts):
        if part in ("images", "masks"):
            return str(Path(*parts[index:]))
    return name


# --------------------------------------------------------------------------------- low-dose CT


def plan_ldct_mayo(root: Path, spec: DatasetSpec) -> DatasetPlan:
    """2016 Mayo low-dose CT DICOM: `<patient>/quarter/X.IMA` (input) and `<patient>/full/X.IMA`
    (target), one case per slice named by its file; split by patient, `every_fifth` over patients
    (the first of the four here, L096)."""
    patients = [d for d in _visible(root.iterdir()) if (d / "quarter").is_dir() and (d / "full").is_dir()]
    if not patients:
        raise not_the_release(root, spec, "no <patient>/quarter and <patient>/full folders")
    splits = every_fifth(p.name for p in patients)
    plan = DatasetPlan(spec, root, [])
    for patient in patients:
        quarter = {p.name: p for p in _visible((patient / "quarter").iterdir()) if p.is_file()}
        full = {p.name: p for p in _visible((patient / "full").iterdir()) if p.is_file()}
        for name in sorted(set(quarter) | set(full), key=natural_key):
            case = Path(name).stem
            if name not in full or name not in quarter:
                missing = "full" if name not in full else "quarter"
                plan.problems.append(CaseProblem(case, f"{patient / missing / name}: no {missing}-dose slice of this name"))
                continue
            channels = (SourceFile(str(quarter[name])), SourceFile(str(full[name])))
            plan.cases.append(CaseSource(case, splits[patient.name], channels))
    return plan


def plan_ldct(root: Path, spec: DatasetSpec) -> DatasetPlan:
    """AAPM challenge slices as MATLAB files (eunh/low_dose_CT): `*.mat` with `quarter_dose` (input)
    and `routine_dose` (target) in linear attenuation, rescaled to HU by the spec; all train (three
    slices; the Mayo figures are measured on ldct-mayo's held-out patient)."""
    files = _visible(root.glob("*.mat"))
    if not files:
        raise not_the_release(root, spec, "no .mat files")
    plan = DatasetPlan(spec, root, [])
    for path in files:
        channels = (SourceFile(str(path), "quarter_dose"), SourceFile(str(path), "routine_dose"))
        plan.cases.append(CaseSource(path.stem, "train", channels))
    return plan


# --------------------------------------------------------------------------------- BraTS

BRATS2013_SPLITS = {"train": "train", "validation": "train", "test": "test"}


def plan_brats2013(root: Path, spec: DatasetSpec) -> DatasetPlan:
    """DeepMedic's BraTS 2013 examples: `{train,validation,test}/<case>/Flair_subtrMeanDivStd.nii.gz`
    (input) and `T1c_subtrMeanDivStd.nii.gz` (target). train/ and validation/ are the training split
    (the prompt pool: training uses no validation split), test/ the test split."""
    folders = [name for name in BRATS2013_SPLITS if (root / name).is_dir()]
    if not folders:
        raise not_the_release(root, spec, "no train/, validation/ or test/ folder")
    plan = DatasetPlan(spec, root, [])
    for folder in folders:
        for case in (d for d in _visible((root / folder).iterdir()) if d.is_dir()):
            flair, t1c = case / "Flair_subtrMeanDivStd.nii.gz", case / "T1c_subtrMeanDivStd.nii.gz"
            plan.cases.append(CaseSource(case.name, BRATS2013_SPLITS[folder], (SourceFile(str(flair)), SourceFile(str(t1c)))))
    return plan


BRATS_CONTRASTS = ("t1n", "t1c", "t2w", "t2f")


def _brats_cases(root: Path, last: str) -> list[tuple[str, Path, str]]:
    """(case, folder, file prefix) of BraTS 2023 style files `<prefix><last>.nii.gz`, in the folder
    itself or one folder per case; a bare `<last>.nii.gz` is one case named after the folder."""
    found = []
    for path in [*_visible(root.glob(f"*{last}.nii.gz")), *_visible(root.glob(f"*/*{last}.nii.gz"))]:
        prefix = path.name[: -len(f"{last}.nii.gz")]
        if prefix and not prefix.endswith(("-", "_")):
            continue  # another contrast that ends the same way
        case = prefix.rstrip("-_") or path.parent.name
        found.append((case, path.parent, prefix))
    return found


def plan_brats_synthesis(root: Path, spec: DatasetSpec) -> DatasetPlan:
    """BraTS 2023 cases as `<case>-t1n/-t1c/-t2w/-t2f.nii.gz` (a folder per case, or all in one; bare
    `t1n.nii.gz` ... for one case): channels t1n, t1c, t2w, t2f, the spec taking t2f (FLAIR) to
    t1c; an nnU-Net raw folder (`_0000` .. `_0003` in that order) is read as such. Split `every_fifth`."""
    if (root / "imagesTr").is_dir():
        return plan_nnunet(root, {}, spec)
    found = _brats_cases(root, "t2f")
    if not found:
        raise not_the_release(root, spec, "no t2f.nii.gz files")
    splits = every_fifth(case for case, _, _ in found)
    plan = DatasetPlan(spec, root, [])
    for case, folder, prefix in found:
        files = [folder / f"{prefix}{contrast}.nii.gz" for contrast in BRATS_CONTRASTS]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            plan.problems.append(CaseProblem(case, f"{folder}: missing {', '.join(missing)}"))
            continue
        plan.cases.append(CaseSource(case, splits[case], tuple(SourceFile(str(f)) for f in files)))
    return plan


def plan_brats_local(root: Path, spec: DatasetSpec) -> DatasetPlan:
    """BraTS-Local inpainting: `<case>-t1n-voided.nii.gz` (input, tumour region zeroed),
    `<case>-t1n.nii.gz` (target) and `<case>-mask.nii.gz` (the region to fill), a folder per case or
    all in one; an nnU-Net raw folder is read as such. Split `every_fifth`."""
    if (root / "imagesTr").is_dir():
        return plan_nnunet(root, {}, spec)
    found = _brats_cases(root, "t1n-voided")
    if not found:
        raise not_the_release(root, spec, "no <case>-t1n-voided.nii.gz files")
    splits = every_fifth(case for case, _, _ in found)
    plan = DatasetPlan(spec, root, [])
    for case, folder, prefix in found:
        voided, full, mask = (folder / f"{prefix}{part}.nii.gz" for part in ("t1n-voided", "t1n", "mask"))
        missing = [f.name for f in (full, mask) if not f.is_file()]
        if missing:
            plan.problems.append(CaseProblem(case, f"{folder}: missing {', '.join(missing)}"))
            continue
        plan.cases.append(CaseSource(case, splits[case], (SourceFile(str(voided)), SourceFile(str(full))), SourceFile(str(mask))))
    return plan


def plan_brats_local_held_out(data_root: Path, derived: Path, spec: DatasetSpec, log: Callable[[str], None] = print) -> DatasetPlan:
    """brats-local in the real store: the BraTS-Local release's cases, exactly as published, are the
    test split; the training split (the prompt pool) is derived, one case per t1n of the synthesis
    release (`brats-synthesis/`, a different subject in the same SRI24 space): that t1n voided under
    a published case's mask (the i-th synthesis case takes the mask of the (i mod n)-th published
    case), with the t1n as ground truth and the mask as the region (`storage.derived`; the voided
    file is written to `derived/brats-local/<case>/`, the t1n and the mask are read in place). A
    one-case release cannot give both a prompt pool and a test case; a derived case whose t1n
    correlates with a test subject's beyond `SAME_SUBJECT_CORRELATION` is refused (it would leak
    the test case). Without `brats-synthesis/` the release is planned as `mvg ingest` plans it."""
    from storage.derived import DerivationError, derive_voided_case

    published = plan_brats_local(data_root / RECIPES[spec.name].folder, spec)
    synthesis = data_root / RECIPES["brats-synthesis"].folder
    sources = _brats_cases(synthesis, "t1n") if synthesis.is_dir() else []
    test_cases = [c for c in published.cases if c.label is not None]
    if not sources or not test_cases or (published.root / "imagesTr").is_dir():
        log(f"{spec.name}: no training case derived (it needs published <case>-t1n-voided cases and a t1n in "
            f"{synthesis}): the release is planned as published")
        return published
    plan = _resplit(published, dict.fromkeys((c.case for c in published.cases), "test"))
    held_out = {c.case: Path(c.channels[1].path) for c in test_cases}
    for index, (case, folder, prefix) in enumerate(sources):
        lender = test_cases[index % len(test_cases)]
        name = f"{case}-voided-{lender.case}"
        t1n, mask = folder / f"{prefix}t1n.nii.gz", Path(lender.label.path)
        try:
            made = derive_voided_case(name, t1n, mask, held_out, derived / spec.name)
        except DerivationError as error:
            plan.problems.append(CaseProblem(name, str(error)))
            continue
        log(f"{spec.name}: {made.status} training case {name} in {made.voided.parent} "
            f"(t1n of {synthesis.name}/{t1n.name} voided under {mask.name})")
        plan.cases.append(CaseSource(name, "train", (SourceFile(str(made.voided)), SourceFile(str(t1n))), SourceFile(str(mask))))
    return plan


def plan_brats_edema(root: Path, spec: DatasetSpec) -> DatasetPlan:
    """SAM-Med3D's BraTS 2021 example: an nnU-Net raw folder without dataset.json,
    `imagesTr/<case>.nii.gz` (FLAIR) and `labelsTr/<case>.nii.gz` (0/1 edema). Split `every_fifth`."""
    if not (root / "imagesTr").is_dir():
        raise not_the_release(root, spec, "no imagesTr/ folder")
    plan = plan_nnunet(root, {}, spec)
    if (root / "imagesTs").is_dir() and any(c.split == "test" for c in plan.cases):
        return plan  # the folder has its own labelled test images
    return _resplit(plan, every_fifth(c.case for c in plan.cases))


# --------------------------------------------------------------------------------- spinal cord

# (case, image, cord mask, grey-matter mask or None), from the sct_testing_data release
SCT_CASES = (
    ("t1", "t1/t1w.nii.gz", "t1/t1w_seg-manual.nii.gz", None),
    ("t2", "t2/t2.nii.gz", "t2/t2_seg-manual.nii.gz", None),
    ("t2s", "t2s/t2s.nii.gz", "t2s/t2s_seg.nii.gz", "t2s/t2s_gmseg_manual.nii.gz"),
    ("mt1", "mt/mt1.nii.gz", "mt/mt1_seg.nii.gz", "mt/mt1_gmseg_goldstandard.nii.gz"),
)


def plan_sct(root: Path, spec: DatasetSpec) -> DatasetPlan:
    """Spinal Cord Toolbox test data (one subject): the t1, t2, t2* and MT1 images, each with its
    cord mask (class 1; manual for t1 and t2) and, for t2* and MT1, the grey-matter mask (class 2,
    inside the cord, merged over it). All train (one subject)."""
    present = [row for row in SCT_CASES if (root / row[1]).is_file()]
    if not present:
        raise not_the_release(root, spec, "none of t1/t1w.nii.gz, t2/t2.nii.gz, t2s/t2s.nii.gz, mt/mt1.nii.gz")
    plan = DatasetPlan(spec, root, [])
    for case, image, cord, grey in present:
        parts = [(1, SourceFile(str(root / cord)))] + ([(2, SourceFile(str(root / grey)))] if grey else [])
        plan.cases.append(CaseSource(case, "train", (SourceFile(str(root / image)),), None, tuple(parts)))
    return plan


# --------------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class Recipe:
    """How one public release is read: its spec, the folder name it usually has (the name
    `build_real_store` looks for), its planner and its split in words. `held_out`, when given,
    plans the dataset for the real store from the whole data folder instead (data root, folder for
    derived files, spec, log), and `real_splits` says its split."""

    spec: str
    folder: str
    planner: Callable[[Path, DatasetSpec], DatasetPlan]
    splits: str
    held_out: Callable[[Path, Path, DatasetSpec, Callable[[str], None]], DatasetPlan] | None = None
    real_splits: str = ""

    def plan(self, source: str | Path, spec: DatasetSpec | str | None = None) -> DatasetPlan:
        spec = get_spec(spec or self.spec) if not isinstance(spec, DatasetSpec) else spec
        source = Path(source)
        if not source.is_dir():
            raise LayoutError(f"{source}: the {spec.title} release is a folder; expected {spec.expected}")
        plan = self.planner(source, spec)
        if not plan.cases and not plan.problems:
            raise not_the_release(source, spec, "no cases found")
        return plan


RECIPES: dict[str, Recipe] = {
    recipe.spec: recipe
    for recipe in (
        Recipe("acdc", "acdc", plan_acdc, "slices/ stacked into one volume per patient and frame: train; volumes/: test"),
        Recipe("cmr-mscmrseg", "cmr-mscmrseg", plan_mscmrseg, EVERY_FIFTH),
        Recipe("jsrt", "jsrt", plan_jsrt, EVERY_FIFTH),
        Recipe("cxr", "cxr", plan_cxr, "all train"),
        Recipe("ct-slices", "ct-slices", plan_ct_slices, "all train"),
        Recipe("ldct-mayo", "ldct-mayo", plan_ldct_mayo, "by patient: " + EVERY_FIFTH.replace("case", "patient")),
        Recipe("ldct", "ldct", plan_ldct, "all train"),
        Recipe("brats2013", "brats2013-deepmedic", plan_brats2013, "train/ and validation/: train; test/: test"),
        Recipe("brats-synthesis", "brats-synthesis", plan_brats_synthesis, EVERY_FIFTH),
        Recipe("brats-local", "brats-inpainting", plan_brats_local, EVERY_FIFTH, plan_brats_local_held_out,
               "in the real store: the published cases test; train derived from brats-synthesis/ t1n voided under their masks"),
        Recipe("brats-edema", "brats-edema", plan_brats_edema, EVERY_FIFTH),
        Recipe("sct", "sct", plan_sct, "all train"),
    )
}


def recipe_hint(source: Path) -> str:
    """For an error about a folder that a recipe would read: which --spec to add."""
    names = [r.spec for r in RECIPES.values() if r.folder == source.name]
    return f" (if it is the public {names[0]} release, add --spec {names[0]})" if names else ""


# --------------------------------------------------------------------------------- the real store


def build_real_store(
    data_root: str | Path,
    store,
    size: int = 128,
    workers: int = 1,
    client=None,
    address: str | None = None,
    datasets: Iterable[str] | None = None,
    log: Callable[[str], None] = print,
    derived: str | Path | None = None,
) -> dict[str, str]:
    """Ingest every release found in `data_root` (its folders named as in `RECIPES`) into `store`
    (a folder or URL) at `size` px; returns {dataset name: task} of the datasets built, in table
    order. `datasets` picks spec names; `client` reuses a Dask client, `address` names a running
    scheduler, else a LocalCluster of `workers` processes runs for the call. Unchanged cases are skipped, so a second call is quick.
    A recipe with a `held_out` planner (brats-local) plans from the whole data folder and may write
    derived files: into `derived` (a local folder, never inside `data_root`), by default
    `derived_folder(store)` beside the store; they are re-used while their sources are unchanged.
    Raises FileNotFoundError when `data_root` is absent and RuntimeError, after ingesting all the
    others, when any case failed."""
    from contextlib import nullcontext

    from storage.ingest import IngestOptions, dask_client, ingest

    data_root = Path(data_root)
    if not data_root.is_dir():
        raise FileNotFoundError(f"{data_root}: no such data folder (expected the public releases: "
                                f"{', '.join(sorted({r.folder for r in RECIPES.values()}))})")
    derived = Path(derived).expanduser().absolute() if derived is not None else derived_folder(store)
    if derived.resolve().is_relative_to(data_root.resolve()):
        raise ValueError(f"{derived}: derived files are never written inside the data folder {data_root}")
    chosen = list(datasets) if datasets is not None else list(RECIPES)
    unknown = sorted(set(chosen) - set(RECIPES))
    if unknown:
        raise KeyError(f"no recipe for {', '.join(unknown)}; recipes: {', '.join(RECIPES)}")
    built: dict[str, str] = {}
    failures: list[str] = []
    with nullcontext(client) if client is not None else dask_client(workers, address) as dask:
        for name in chosen:
            recipe = RECIPES[name]
            folder = data_root / recipe.folder
            if not folder.is_dir():
                log(f"{name}: skipped, no {recipe.folder}/ in {data_root}")
                continue
            plan = recipe.held_out(data_root, derived, get_spec(recipe.spec), log) if recipe.held_out else recipe.plan(folder)
            report = ingest(plan, store, dask, IngestOptions(size=size))
            counts = report.counts()
            splits = {split: sum(1 for c in plan.cases if c.split == split) for split in ("train", "test")}
            log(f"{name} ({plan.spec.task}): {splits['train']} train, {splits['test']} test; "
                f"{counts['ingested']} ingested, {counts['skipped']} unchanged, {counts['failed']} failed")
            failures += [f"{name}/{r.case}: {r.reason}" for r in report.failed]
            built[report.dataset] = plan.spec.task
    if failures:
        raise RuntimeError(f"{len(failures)} case(s) failed:\n" + "\n".join(failures))
    return built


def derived_folder(store) -> Path:
    """Where `build_real_store` writes derived files by default: `<store>-derived/` beside a local
    store (`$MVG_HOME/real-store-derived`), `$MVG_HOME/<name>-derived/` for an object-store URL
    (the files are read by the ingest workers, like the data folder itself)."""
    from storage.home import mvg_home
    from storage.location import Location

    location = Location.of(store)
    if location.is_local:
        path = Path(location.path)
        return path.parent / f"{path.name}-derived"
    return mvg_home() / f"{location.name or 'store'}-derived"
