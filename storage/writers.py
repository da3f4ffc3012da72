"""Writers: a canonical `(z, y, x)` array back in the geometry of the scan it was read from.

The inverse of `storage.readers`: whatever orientation the input file had, the written file lines
up with it voxel for voxel, so a viewer overlays a prediction on its input without resampling.

- NIfTI (`.nii`, `.nii.gz`): the source's own affine, shape and axis order (`geometry.to_nifti`).
  A DICOM series or an MHA/NRRD file is written back as NIfTI this way too.
- PNG (`.png`): one 2-D image, for inputs that are one plane; rows run along the file's second
  axis, as `read_picture` reads them, so a PNG input comes back with its own width and height.

Label maps keep integer types (the smallest unsigned one that holds the values). Images in [0, 1]
are float32 in NIfTI and 16-bit grey in PNG: 8 bits would cap PSNR near 59 dB, 16 bits
keep steps of 1.5e-5.

Every write goes to a temporary file beside the output and is renamed into place, so a failure
leaves no half-written file, and an existing output is replaced whole or not at all. The file gets
the mode the umask gives (`storage.scratch`), as other tools' outputs do.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from storage.geometry import Geometry, stored_shape, to_nifti, to_source
from storage.scratch import scratch_beside

NIFTI_SUFFIXES = (".nii.gz", ".nii")
PNG_SUFFIXES = (".png",)
WRITABLE = ", ".join(NIFTI_SUFFIXES + PNG_SUFFIXES)
PNG_IMAGE_LEVELS = 65535  # 16-bit grey


class WriteError(ValueError):
    """An output cannot be written as asked (format, dimensions or values); names the file."""

    def __init__(self, path: str | Path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


def output_format(path: str | Path) -> str:
    """`nifti` or `png`, from the output's suffix; anything else is refused."""
    name = Path(path).name.lower()
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if name.endswith(PNG_SUFFIXES):
        return "png"
    raise WriteError(path, f"cannot write this format; the output name must end in {WRITABLE}")


def check_writable(path: str | Path, geometry: Geometry) -> None:
    """Refuse, before any work is done, an output that could not hold an array of this geometry."""
    if output_format(path) == "png":
        _plane_axis(path, geometry.source_shape)
    if Path(path).is_dir():
        raise WriteError(path, "is a directory; give a file name")


def write_label_map(labels_zyx: np.ndarray, geometry: Geometry, path: str | Path, top: int | None = None) -> Path:
    """A non-negative integer label map in the source's geometry. `top`: the largest label the map
    may hold (default: its own largest), so all outputs of one label set get one dtype."""
    labels_zyx = np.asarray(labels_zyx)
    if not np.issubdtype(labels_zyx.dtype, np.integer):
        raise WriteError(path, f"a label map must be integers, got {labels_zyx.dtype}")
    top = max(int(labels_zyx.max(initial=0)), top or 0)
    if labels_zyx.size and labels_zyx.min() < 0:
        raise WriteError(path, f"label maps are written unsigned; got the value {labels_zyx.min()}")
    if output_format(path) == "png" and top > np.iinfo(np.uint16).max:
        raise WriteError(path, f"PNG holds labels up to 65535; got {top}; write .nii.gz instead")
    return _write(labels_zyx.astype(label_dtype(top), copy=False), geometry, path)


def write_image(image_zyx: np.ndarray, geometry: Geometry, path: str | Path) -> Path:
    """An image in [0, 1] in the source's geometry: float32 NIfTI or 16-bit PNG."""
    image_zyx = np.asarray(image_zyx, dtype=np.float32)
    if image_zyx.size and not (np.isfinite(image_zyx).all() and image_zyx.min() >= 0 and image_zyx.max() <= 1):
        raise WriteError(path, "images are written from values in [0, 1]")
    if output_format(path) == "png":
        image_zyx = np.rint(image_zyx * PNG_IMAGE_LEVELS).astype(np.uint16)
    return _write(image_zyx, geometry, path)


def label_dtype(top: int) -> np.dtype:
    """The smallest unsigned type that viewers read for labels up to `top` (int32 past uint16)."""
    for dtype in (np.uint8, np.uint16):
        if top <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    return np.dtype(np.int32)


def _write(data_zyx: np.ndarray, geometry: Geometry, path: str | Path) -> Path:
    path = Path(path)
    fmt = output_format(path)
    check_writable(path, geometry)
    if data_zyx.ndim != 3:
        raise WriteError(path, f"expected a (z, y, x) array, got shape {data_zyx.shape}")
    canonical = _canonical_shape(geometry)
    if data_zyx.shape != canonical:
        raise WriteError(path, f"a (z, y, x) array of shape {data_zyx.shape} does not fit the input's grid {canonical}")
    path.parent.mkdir(parents=True, exist_ok=True)
    # the temporary name keeps the real suffix: nibabel picks gzip from it
    handle, scratch = scratch_beside(path, suffix=_suffix(path))  # the umask's mode, not mkstemp's 0600
    os.close(handle)
    try:
        if fmt == "nifti":
            _save_nifti(data_zyx, geometry, Path(scratch))
        else:
            _save_png(data_zyx, geometry, Path(scratch), path)
        os.replace(scratch, path)
    except BaseException:
        Path(scratch).unlink(missing_ok=True)
        raise
    return path


def _save_nifti(data_zyx: np.ndarray, geometry: Geometry, scratch: Path) -> None:
    import nibabel as nib

    image = to_nifti(data_zyx, geometry)
    if geometry.spacing_known:
        image.header.set_xyzt_units("mm")
    nib.save(image, str(scratch))


def _save_png(data_zyx: np.ndarray, geometry: Geometry, scratch: Path, path: Path) -> None:
    from PIL import Image

    source = to_source(data_zyx, geometry)
    plane = np.take(source, 0, axis=_plane_axis(path, source.shape)).T  # rows along the second file axis
    if plane.dtype != np.uint8:  # 16-bit grey ("I;16"): labels past 255, and every image
        plane = plane.astype(np.uint16)
    picture = Image.fromarray(np.ascontiguousarray(plane))
    picture.save(scratch, format="PNG")


def _plane_axis(path: str | Path, source_shape: tuple[int, ...]) -> int:
    """The singleton axis a PNG drops (the last one, so a 2-D NIfTI's third axis); refuses volumes."""
    singletons = [axis for axis in (2, 1, 0) if source_shape[axis] == 1]
    if not singletons:
        raise WriteError(
            path,
            f"PNG holds one 2-D image but the input is a volume of shape {tuple(source_shape)}; "
            "name the output .nii.gz",
        )
    return singletons[0]


def _canonical_shape(geometry: Geometry) -> tuple[int, int, int]:
    """The (z, y, x) shape `canonicalize` gave the source."""
    return stored_shape(geometry)


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix
