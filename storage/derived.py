"""Derived files: images the real store needs that no release publishes, made from released ones.

One derivation exists. The BraTS-Local release in the data folder holds one case, so it cannot give
both a prompt pool (the training split) and a held-out test case. A training case is made from a
different BraTS subject in the same 240x240x155 SRI24 space (the synthesis release's t1n) the way
BraTS-Local voids its cases: the t1n with the voxels under a BraTS-Local mask set to 0 (the
published voided image equals its t1n outside the mask and is 0 inside it). Only the voided image is
written; the t1n (ground truth) and the mask are read where they are published.

Derived files live in a folder the caller owns (`build_real_store`: beside the store), never in the
data folder. Each derived case is a folder `<case>/` with `<case>-t1n-voided.nii.gz` and
`derivation.json` (the sources' checksums, the written file's checksum, the similarity measured
against the held-out subjects). Both are written aside and renamed into place, the JSON last, so a
half-written case is never taken for a finished one; a case whose sources, recipe version and file
are unchanged is reused, not rewritten. The gzip stream carries no time stamp: the same sources give
the same bytes, hence the same ingest checksum.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

DERIVATION_VERSION = 1  # bump when the derivation changes what it writes for the same sources
SAME_SUBJECT_CORRELATION = 0.9  # above this, two co-registered t1n images are taken for one subject
AFFINE_TOLERANCE = {"rtol": 1e-4, "atol": 1e-3}  # as ingest's same-grid check


class DerivationError(ValueError):
    """The sources cannot give the derived case; the message names the files and the problem."""


@dataclass(frozen=True)
class DerivedCase:
    case: str
    voided: Path  # the written file
    status: str  # derived | reused
    correlations: dict[str, float]  # held-out case -> Pearson correlation of its t1n with the source t1n


def file_digest(path: Path) -> str:
    digest = hashlib.blake2b(digest_size=16)
    with Path(path).open("rb") as file:
        while block := file.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def _load(path: Path) -> tuple[nib.Nifti1Image, np.ndarray]:
    try:
        image = nib.load(path)
        return image, np.asanyarray(image.dataobj)
    except (OSError, ValueError, EOFError) as error:
        raise DerivationError(f"{path}: cannot be read as NIfTI ({error})") from None


def _require_same_grid(reference: Path, image: nib.Nifti1Image, other_path: Path, other: nib.Nifti1Image) -> None:
    if image.shape != other.shape:
        raise DerivationError(f"{other_path}: shape {other.shape} differs from {reference}'s {image.shape}: not one voxel grid")
    if not np.allclose(image.affine, other.affine, **AFFINE_TOLERANCE):
        raise DerivationError(f"{other_path}: affine differs from {reference}'s: not one voxel grid")


def void_under_mask(t1n: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The t1n with every voxel under the mask (mask > 0) set to 0, as BraTS-Local voids its cases."""
    voided = np.array(t1n, copy=True)
    voided[np.asarray(mask) > 0] = 0
    return voided


def subject_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two co-registered images over the voxels where either is non-zero
    (the two heads): about 1 for one subject, 0.32 for the two BraTS subjects of the data folder."""
    inside = (a != 0) | (b != 0)
    if inside.sum() < 2:
        return 0.0
    x, y = a[inside].astype(np.float64), b[inside].astype(np.float64)
    if x.std() == 0 or y.std() == 0:
        return 0.0
    return float(np.corrcoef(x, y)[0, 1])


def _write_atomically(path: Path, content: bytes) -> None:
    aside = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with aside.open("wb") as file:
            file.write(content)
            file.flush()
            os.fsync(file.fileno())
        os.replace(aside, path)
    finally:
        aside.unlink(missing_ok=True)


def nifti_gz_bytes(image: nib.Nifti1Image) -> bytes:
    """A .nii.gz file's bytes without the gzip time stamp: the same image gives the same bytes."""
    return gzip.compress(image.to_bytes(), compresslevel=6, mtime=0)


def derive_voided_case(
    case: str, t1n: Path, mask: Path, held_out: dict[str, Path], folder: Path
) -> DerivedCase:
    """Write `folder/<case>/<case>-t1n-voided.nii.gz`: `t1n` zeroed under `mask` (same grid, checked),
    unless the one there was made from the same bytes by this version (then it is reused).
    `held_out` maps each test case to its t1n ground truth: a source t1n that correlates above
    `SAME_SUBJECT_CORRELATION` with one of them is the same subject, and would leak it into training."""
    t1n, mask = Path(t1n), Path(mask)
    target = Path(folder) / case
    voided_path, record_path = target / f"{case}-t1n-voided.nii.gz", target / "derivation.json"
    sources = {"t1n": {"file": t1n.name, "checksum": file_digest(t1n)},
               "mask": {"file": mask.name, "checksum": file_digest(mask)},
               "held_out": {name: file_digest(path) for name, path in sorted(held_out.items())}}
    previous = _read_record(record_path)
    if (
        previous is not None
        and previous.get("version") == DERIVATION_VERSION
        and previous.get("sources") == sources
        and voided_path.is_file()
        and previous.get("voided", {}).get("checksum") == file_digest(voided_path)
    ):
        return DerivedCase(case, voided_path, "reused", previous.get("correlations", {}))

    source_image, source = _load(t1n)
    mask_image, mask_array = _load(mask)
    if source.ndim != 3:
        raise DerivationError(f"{t1n}: {source.ndim}-D {source.shape} where a 3-D t1n is expected")
    _require_same_grid(t1n, source_image, mask, mask_image)
    if not np.any(mask_array > 0):
        raise DerivationError(f"{mask}: the mask is empty")
    correlations = {}
    for name, path in sorted(held_out.items()):
        other_image, other = _load(path)
        _require_same_grid(t1n, source_image, path, other_image)
        correlations[name] = round(subject_correlation(source, other), 4)
        if correlations[name] > SAME_SUBJECT_CORRELATION:
            raise DerivationError(
                f"{t1n}: correlates {correlations[name]:.2f} with the held-out {name} ({path}): one subject, "
                f"whose training case would leak the test case's ground truth"
            )

    voided = void_under_mask(source, mask_array)
    image = nib.Nifti1Image(voided, source_image.affine, source_image.header)
    image.set_data_dtype(voided.dtype)  # the source's values, unscaled: equal outside the mask
    image.header.set_slope_inter(1.0, 0.0)
    target.mkdir(parents=True, exist_ok=True)
    content = nifti_gz_bytes(image)
    _write_atomically(voided_path, content)
    record = {
        "version": DERIVATION_VERSION,
        "what": "derived, not published: the t1n with the voxels under the mask set to 0 (BraTS-Local's voiding)",
        "sources": sources,
        "voided": {"file": voided_path.name, "checksum": hashlib.blake2b(content, digest_size=16).hexdigest()},
        "correlations": correlations,
    }
    _write_atomically(record_path, (json.dumps(record, indent=1) + "\n").encode())
    return DerivedCase(case, voided_path, "derived", correlations)


def _read_record(path: Path) -> dict | None:
    try:
        content = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return content if isinstance(content, dict) else None
