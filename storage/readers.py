"""Readers: one function per file format, each returning a `Scan` in the canonical convention.

A `Scan` is a `(z, y, x)` array (or `(c, z, y, x)` for multi-channel files) in closest-canonical
orientation plus its `Geometry`. Any failure becomes a `ReadError` that names the file and the
problem in words a user can act on; no reader lets a library's bare traceback through.
"""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from isal.igzip_lib import IsalError

from storage.geometry import Geometry, canonicalize, planar_geometry


class ReadError(ValueError):
    """A file could not be read or is not what the dataset says it is."""

    def __init__(self, path: str | Path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


@dataclass
class Scan:
    array: np.ndarray  # (z, y, x), or (c, z, y, x) for multi-channel sources
    geometry: Geometry
    path: str

    @property
    def channels(self) -> int:
        return self.array.shape[0] if self.array.ndim == 4 else 1

    def channel(self, index: int) -> Scan:
        if self.array.ndim != 4:
            if index == 0:
                return self
            raise ReadError(self.path, f"has one channel, channel {index} was asked for")
        if not 0 <= index < self.array.shape[0]:
            raise ReadError(self.path, f"has {self.array.shape[0]} channels, channel {index} was asked for")
        return Scan(self.array[index], self.geometry, self.path)


NIFTI_SUFFIXES = (".nii.gz", ".nii")
ITK_SUFFIXES = (".mha", ".mhd", ".nrrd", ".nhdr")
PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf")


def format_of(path: str | Path) -> str:
    """The reader a path needs: nifti, dicom, itk, picture, hdf5, mat or numpy."""
    path = Path(path)
    name = path.name.lower()
    if path.is_dir():
        return "dicom"
    for fmt, suffixes in (
        ("nifti", NIFTI_SUFFIXES),
        ("itk", ITK_SUFFIXES),
        ("picture", PICTURE_SUFFIXES),
        ("hdf5", HDF5_SUFFIXES),
        ("mat", (".mat",)),
        ("numpy", (".npy", ".npz")),
        ("dicom", (".dcm", ".ima")),  # .IMA: Siemens' name for single DICOM images
    ):
        if name.endswith(suffixes):
            return fmt
    raise ReadError(path, "unknown image format (expected NIfTI, DICOM, MHA/NRRD, PNG/JPG/BMP, HDF5, .mat or .npy/.npz)")


def read_scan(path: str | Path, key: str | None = None, slice_axis: int | None = None) -> Scan:
    """Read any supported file; `key` names the HDF5 dataset, .mat variable or .npz entry.

    `slice_axis` says which axis of the file holds the slices:
    - HDF5, .mat, .npy/.npz (bare arrays, no geometry): the axis of the stored array, default 0
      (stored (D, H, W)); 2 or -1 for releases that store (H, W, D). It is moved first.
    - NIfTI, DICOM, MHA/NRRD: a file axis in (x, y, z) order; by default none, and the slices are
      the closest canonical (RAS) axial planes. Give 2 to keep the acquisition planes of an oblique
      stack (cardiac short axis) as the slices (`geometry.canonicalize`).
    - pictures are one slice and take none.
    """
    path = Path(path)
    if not path.exists():
        raise ReadError(path, "file not found")
    if path.is_file() and path.stat().st_size == 0:
        raise ReadError(path, "file is empty (0 bytes)")
    if slice_axis is not None and not -3 <= slice_axis <= 2:
        raise ReadError(path, f"slice_axis {slice_axis} is not an axis of a 3-D image (0, 1, 2 or -1 .. -3)")
    if slice_axis and format_of(path) == "picture":
        raise ReadError(path, f"slice_axis {slice_axis}: a picture is one 2-D slice")
    reader = {
        "nifti": read_nifti,
        "dicom": read_dicom_series,
        "itk": read_itk,
        "picture": read_picture,
        "hdf5": read_hdf5,
        "mat": read_mat,
        "numpy": read_numpy,
    }[format_of(path)]
    try:
        if reader in (read_hdf5, read_mat, read_numpy):
            return reader(path, key, slice_axis or 0)
        if reader is read_picture:
            return reader(path)
        return reader(path, slice_axis)
    except ReadError:
        raise
    except (EOFError, zlib.error, gzip.BadGzipFile, IsalError) as error:
        raise ReadError(path, f"file is truncated or corrupt ({error})") from error
    except MemoryError:
        raise
    except Exception as error:  # noqa: BLE001 - every library failure becomes a named, per-file error
        raise ReadError(path, f"cannot be read as {format_of(path)}: {type(error).__name__}: {error}") from error


def read_nifti(path: Path, slice_axis: int | None = None) -> Scan:
    image = _load_nifti(path)
    data = np.asanyarray(image.dataobj)  # decodes here, so truncation surfaces inside read_scan
    if data.ndim == 2:
        data = data[:, :, None]
    if data.ndim == 5 and data.shape[3] == 1:  # NIfTI stores time as axis 3; (x, y, z, 1, c)
        data = data[:, :, :, 0, :]
    if data.ndim == 3:
        array, geometry = canonicalize(data, image.affine, slice_axis=slice_axis)
        return Scan(array, geometry, str(path))
    if data.ndim == 4:
        channels = [canonicalize(data[..., c], image.affine, slice_axis=slice_axis) for c in range(data.shape[3])]
        return Scan(np.stack([a for a, _ in channels]), channels[0][1], str(path))
    raise ReadError(path, f"has {data.ndim} dimensions {data.shape}; expected 3-D or 4-D")


def _load_nifti(path: Path):
    """nibabel image; .nii.gz is inflated with ISA-L, about 3x faster than zlib, the bulk of ingest."""
    import nibabel as nib
    from isal import igzip

    if not path.name.lower().endswith(".gz"):
        return nib.load(str(path))
    compressed = path.read_bytes()
    if not compressed.startswith(b"\x1f\x8b"):
        raise ReadError(path, "is not a gzip file, though its name ends in .gz")
    raw = igzip.decompress(compressed)
    sizes = {int.from_bytes(raw[:4], order) for order in ("little", "big")}
    if 540 in sizes:
        return nib.Nifti2Image.from_bytes(raw)
    if 348 in sizes:
        return nib.Nifti1Image.from_bytes(raw)
    raise ReadError(path, "is not a NIfTI file (its header does not start with size 348 or 540)")


# DICOM stores patient coordinates in LPS; nibabel and our affines are RAS.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def read_dicom_series(path: Path, slice_axis: int | None = None) -> Scan:
    """A folder of one DICOM series (or one .dcm file): slices sorted along the normal, rescaled to HU."""
    import pydicom

    if path.is_file():
        files = [path]
    else:
        files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    slices = []
    for file in files:
        try:
            slices.append(pydicom.dcmread(str(file)))
        except pydicom.errors.InvalidDicomError:
            continue  # DICOMDIR, README and other non-image files live in series folders
    slices = [s for s in slices if "PixelData" in s]
    if not slices:
        raise ReadError(path, "no DICOM images with pixel data in this folder")
    series = {str(getattr(s, "SeriesInstanceUID", "")) for s in slices}
    if len(series) > 1:
        raise ReadError(path, f"holds {len(series)} DICOM series; point to one series folder")
    orientation = np.array(slices[0].ImageOrientationPatient, dtype=float)
    row, col = orientation[:3], orientation[3:]
    normal = np.cross(row, col)
    slices.sort(key=lambda s: float(np.dot(normal, np.array(s.ImagePositionPatient, dtype=float))))
    planes = [_rescaled_pixels(s) for s in slices]
    shapes = {plane.shape for plane in planes}
    if len(shapes) > 1 or planes[0].ndim != 2:
        raise ReadError(path, f"slices are not single 2-D frames of one size (shapes: {sorted(shapes)}); "
                        "multi-frame or mixed-size DICOM is not supported")
    _check_slice_positions(path, slices, normal)
    volume = np.stack(planes, axis=-1)  # (rows, cols, n)
    volume = np.transpose(volume, (1, 0, 2))  # (x=columns, y=rows, z)
    pixel_row, pixel_col = (float(v) for v in slices[0].PixelSpacing)
    positions = [np.array(s.ImagePositionPatient, dtype=float) for s in slices]
    if len(slices) > 1:
        step = (positions[-1] - positions[0]) / (len(slices) - 1)
    else:
        step = normal * float(getattr(slices[0], "SliceThickness", 1.0) or 1.0)
    affine_lps = np.eye(4)
    affine_lps[:3, 0] = row * pixel_col
    affine_lps[:3, 1] = col * pixel_row
    affine_lps[:3, 2] = step
    affine_lps[:3, 3] = positions[0]
    array, geometry = canonicalize(volume, LPS_TO_RAS @ affine_lps, slice_axis=slice_axis)
    return Scan(array, geometry, str(path))


def _check_slice_positions(path: Path, slices, normal: np.ndarray) -> None:
    """The affine assumes evenly spaced, distinct slices; anything else would invent geometry."""
    if len(slices) < 2:
        return
    depths = np.array([np.dot(normal, np.array(s.ImagePositionPatient, dtype=float)) for s in slices])
    gaps = np.diff(depths)
    if np.any(gaps < 1e-3):
        raise ReadError(path, "two or more slices share one ImagePositionPatient (duplicates, or several "
                        "acquisitions in one series)")
    if np.ptp(gaps) > max(1e-2, 0.01 * float(np.median(gaps))):
        raise ReadError(path, f"slice spacing is uneven ({gaps.min():.3g} to {gaps.max():.3g} mm): "
                        "a slice may be missing")


def _rescaled_pixels(dataset) -> np.ndarray:
    """The slice in HU (or the modality's units). Compressed pixel data is decoded by pydicom where it
    can (RLE natively, JPEG baseline and JPEG 2000 through Pillow); what it has no decoder for
    (JPEG lossless, JPEG-LS) by GDCM inside SimpleITK, so no extra decoder package is needed."""
    try:
        pixels = dataset.pixel_array.astype(np.float32)
    except (RuntimeError, NotImplementedError) as error:  # pydicom: no installed plugin decodes this syntax
        return _gdcm_rescaled_pixels(dataset, error)
    slope = float(getattr(dataset, "RescaleSlope", 1.0) or 1.0)
    intercept = float(getattr(dataset, "RescaleIntercept", 0.0) or 0.0)
    return pixels * slope + intercept


def _gdcm_rescaled_pixels(dataset, pydicom_error: Exception) -> np.ndarray:
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetImageIO("GDCMImageIO")  # applies RescaleSlope and RescaleIntercept itself
    reader.SetFileName(str(dataset.filename))
    try:
        frames = sitk.GetArrayFromImage(reader.Execute())  # (frames, rows, columns)
    except RuntimeError as error:
        syntax = dataset.file_meta.TransferSyntaxUID
        raise ReadError(Path(dataset.filename), f"pixel data in {syntax.name} ({syntax}) could not be decoded: "
                        f"{str(pydicom_error).splitlines()[0]}; GDCM: {str(error).strip().splitlines()[-1]}") from error
    return frames[0].astype(np.float32) if frames.shape[0] == 1 else frames.astype(np.float32)


def read_itk(path: Path, slice_axis: int | None = None) -> Scan:
    """MHA / MHD / NRRD through SimpleITK; its LPS direction cosines become a RAS affine."""
    import SimpleITK as sitk

    image = sitk.ReadImage(str(path))
    data = sitk.GetArrayFromImage(image)  # (z, y, x) or (z, y, x, c)
    dimension = image.GetDimension()
    if dimension not in (2, 3):
        raise ReadError(path, f"is a {dimension}-D image; expected 2-D or 3-D")
    if dimension == 2:
        data = data[None]
    direction = np.array(image.GetDirection(), dtype=float).reshape(dimension, dimension)
    spacing = np.array(image.GetSpacing(), dtype=float)
    origin = np.array(image.GetOrigin(), dtype=float)
    affine_lps = np.eye(4)
    affine_lps[:dimension, :dimension] = direction * spacing
    affine_lps[:dimension, 3] = origin
    affine = LPS_TO_RAS @ affine_lps
    if data.ndim == 4:  # vector image: channels last in SimpleITK
        channels = [canonicalize(np.transpose(data[..., c], (2, 1, 0)), affine, slice_axis=slice_axis) for c in range(data.shape[-1])]
        return Scan(np.stack([a for a, _ in channels]), channels[0][1], str(path))
    array, geometry = canonicalize(np.transpose(data, (2, 1, 0)), affine, slice_axis=slice_axis)
    return Scan(array, geometry, str(path))


def read_picture(path: Path) -> Scan:
    """PNG / JPG / BMP / TIFF as one slice; colour images must be grey in disguise."""
    from PIL import Image

    with Image.open(path) as picture:
        picture.load()
        if picture.mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):  # palette indices are not intensities
            picture = picture.convert("RGB")
        data = np.asarray(picture)
    if data.ndim == 3 and data.shape[-1] == 2:  # grey + alpha
        data = data[..., 0]
    if data.ndim == 3:
        colour = data[..., :3]
        if not (np.array_equal(colour[..., 0], colour[..., 1]) and np.array_equal(colour[..., 0], colour[..., 2])):
            # Medical pictures saved as RGB usually carry equal channels; real colour is converted.
            data = np.asarray(Image.fromarray(colour).convert("L"))
        else:
            data = colour[..., 0]
    return _planar_scan(data, path)


def _planar_scan(data: np.ndarray, path: Path, slice_axis: int = 0) -> Scan:
    data = np.asarray(data)
    if slice_axis:  # a 2-D array is one slice whatever the release's convention for volumes
        if data.ndim == 3:
            data = np.ascontiguousarray(np.moveaxis(data, slice_axis, 0))
        elif data.ndim != 2:
            raise ReadError(path, f"has shape {data.shape}; slice_axis {slice_axis} applies to 3-D arrays")
    if data.ndim == 2:
        data = data[None]
    if data.ndim not in (3, 4):
        raise ReadError(path, f"has shape {data.shape}; expected a 2-D image or a (z, y, x) volume")
    return Scan(np.ascontiguousarray(data), planar_geometry(data.shape[-3:]), str(path))


def read_hdf5(path: Path, key: str | None, slice_axis: int = 0) -> Scan:
    """HDF5 dataset `key` (default `image`), taken as (z, y, x) or (y, x), as in SSL4MIS's ACDC;
    `slice_axis` 2 for releases that store (y, x, z)."""
    import h5py

    key = key or "image"
    with h5py.File(path, "r") as file:
        if key not in file:
            raise ReadError(path, f"has no dataset '{key}' (has: {', '.join(sorted(file.keys()))})")
        return _planar_scan(file[key][()], path, slice_axis)


def read_mat(path: Path, key: str | None, slice_axis: int = 0) -> Scan:
    """MATLAB .mat (v5 through scipy, v7.3 through h5py): variable `key`, or the only array."""
    import scipy.io

    try:
        variables = {k: v for k, v in scipy.io.loadmat(str(path)).items() if not k.startswith("__")}
    except NotImplementedError:  # v7.3 files are HDF5 underneath; MATLAB writes them transposed
        import h5py

        with h5py.File(path, "r") as file:
            variables = {k: np.asarray(file[k]).T for k in file.keys() if not k.startswith("#")}
    return _planar_scan(_pick_variable(path, variables, key), path, slice_axis)


def read_numpy(path: Path, key: str | None, slice_axis: int = 0) -> Scan:
    with open(path, "rb") as file:
        signature = file.read(6)
    if not signature.startswith((b"\x93NUMPY", b"PK")):
        raise ReadError(path, "is not a NumPy .npy/.npz file (no NUMPY or zip signature)")
    if path.name.lower().endswith(".npz"):
        with np.load(path, allow_pickle=False) as archive:
            return _planar_scan(_pick_variable(path, {k: archive[k] for k in archive.files}, key), path, slice_axis)
    return _planar_scan(np.load(path, allow_pickle=False), path, slice_axis)


def _pick_variable(path: Path, variables: dict[str, np.ndarray], key: str | None) -> np.ndarray:
    arrays = {k: v for k, v in variables.items() if isinstance(v, np.ndarray) and v.dtype != object}
    if key is not None:
        if key not in arrays:
            raise ReadError(path, f"has no variable '{key}' (has: {', '.join(sorted(arrays)) or 'none'})")
        return arrays[key]
    if len(arrays) != 1:
        raise ReadError(path, f"holds {len(arrays)} arrays ({', '.join(sorted(arrays))}); say which one with a key")
    return next(iter(arrays.values()))
