"""Readers: every format, written here in tmp_path, read back to one canonical convention.

The canonical convention (see storage/geometry.py): a `(z, y, x)` array in closest-canonical RAS
orientation, an affine mapping canonical voxel (x, y, z) to world RAS mm, and enough of the
source geometry to write a prediction back voxel for voxel.

Geometry is checked two ways: against arrays built by hand for a known physical volume, and
independently of nibabel's orientation code by mapping every source voxel through the file's
own affine into world space and back through the canonical affine.
"""

from __future__ import annotations

import gzip
import io
import random

import h5py
import nibabel as nib
import numpy as np
import pydicom
import pytest
import scipy.io
import SimpleITK as sitk
from PIL import Image
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from storage.geometry import Geometry, canonicalize, stored_shape, to_nifti, to_source
from storage.readers import ReadError, Scan, format_of, read_scan

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

# One physical volume, used by every cross-format test: non-square in-plane, anisotropic,
# with different row and column spacing so a swapped PixelSpacing or transposed plane shows.
NZ, NY, NX = 4, 5, 6
SPACING_ZYX = (3.0, 0.7, 0.8)
ORIGIN_RAS = np.array([-20.5, 13.25, -40.0])  # world position of canonical voxel (x=0, y=0, z=0)


def canonical_volume() -> np.ndarray:
    """HU values, all distinct, in the canonical (z, y, x) RAS order."""
    values = np.arange(NZ * NY * NX, dtype=np.int16).reshape(NZ, NY, NX)
    return (values * 7 - 1000).astype(np.int16)


def canonical_affine() -> np.ndarray:
    affine = np.eye(4)
    affine[0, 0], affine[1, 1], affine[2, 2] = SPACING_ZYX[2], SPACING_ZYX[1], SPACING_ZYX[0]
    affine[:3, 3] = ORIGIN_RAS
    return affine


def world_ras(x: float, y: float, z: float) -> np.ndarray:
    """World RAS position of canonical voxel (x, y, z) of the reference volume."""
    return (canonical_affine() @ np.array([x, y, z, 1.0]))[:3]


def lps_like_nifti_source() -> tuple[np.ndarray, np.ndarray]:
    """The reference volume as a NIfTI file in L/P/S order: x runs to the left, y to the back."""
    canonical = canonical_volume()
    data_xyz = np.transpose(canonical[:, ::-1, ::-1], (2, 1, 0)).copy()  # file[i, j, k]
    affine = np.eye(4)
    affine[0, 0], affine[1, 1], affine[2, 2] = -SPACING_ZYX[2], -SPACING_ZYX[1], SPACING_ZYX[0]
    affine[:3, 3] = world_ras(NX - 1, NY - 1, 0)
    return data_xyz, affine


def assert_world_consistent(scan: Scan, source_xyz: np.ndarray, source_affine: np.ndarray) -> None:
    """Every source voxel lands, through world space, on a canonical voxel with the same value."""
    index = np.indices(source_xyz.shape[:3]).reshape(3, -1)
    homogeneous = np.vstack([index, np.ones(index.shape[1])])
    world = np.asarray(source_affine, dtype=float) @ homogeneous
    canonical_index = np.linalg.inv(np.asarray(scan.geometry.affine)) @ world
    rounded = np.rint(canonical_index[:3]).astype(int)
    np.testing.assert_allclose(canonical_index[:3], rounded, atol=1e-4)
    x, y, z = rounded
    np.testing.assert_array_equal(scan.array[z, y, x], source_xyz[tuple(index)])


def assert_canonical_ras(geometry: Geometry) -> None:
    """Axis-aligned input ends up with a positive diagonal affine: canonical RAS."""
    matrix = np.asarray(geometry.affine)[:3, :3]
    np.testing.assert_allclose(matrix, np.diag(np.diag(matrix)), atol=1e-6)
    assert (np.diag(matrix) > 0).all()


def save_nifti(path, data_xyz: np.ndarray, affine: np.ndarray) -> None:
    nib.save(nib.Nifti1Image(data_xyz, affine), str(path))


# ----------------------------------------------------------------------------------------------
# 1. NIfTI
# ----------------------------------------------------------------------------------------------


def test_nifti_lps_like_volume_reads_as_ras_zyx(tmp_path):
    data_xyz, affine = lps_like_nifti_source()
    path = tmp_path / "case.nii.gz"
    save_nifti(path, data_xyz, affine)

    scan = read_scan(path)

    assert format_of(path) == "nifti"
    assert scan.path == str(path)
    assert scan.array.shape == (NZ, NY, NX)
    assert scan.array.dtype == np.int16
    np.testing.assert_array_equal(scan.array, canonical_volume())
    assert scan.geometry.spacing == pytest.approx(SPACING_ZYX, abs=1e-6)
    assert scan.geometry.spacing_known is True
    assert_canonical_ras(scan.geometry)
    np.testing.assert_allclose(scan.geometry.affine, canonical_affine(), atol=1e-5)
    assert scan.geometry.source_axcodes == ("L", "P", "S")
    assert scan.geometry.source_shape == (NX, NY, NZ)
    assert_world_consistent(scan, data_xyz, nib.load(str(path)).affine)


def test_nifti_round_trip_is_exact(tmp_path):
    data_xyz, affine = lps_like_nifti_source()
    path = tmp_path / "case.nii.gz"
    save_nifti(path, data_xyz, affine)
    on_disk_affine = nib.load(str(path)).affine  # the header stores float32

    scan = read_scan(path)

    np.testing.assert_array_equal(to_source(scan.array, scan.geometry), data_xyz)
    written = to_nifti(scan.array, scan.geometry)
    np.testing.assert_array_equal(np.asarray(written.dataobj), data_xyz)
    np.testing.assert_array_equal(written.affine, on_disk_affine)
    np.testing.assert_allclose(written.affine, affine, atol=1e-5)

    # Through disk and a JSON-able dict, as a prediction would travel.
    geometry = Geometry.from_dict(scan.geometry.to_dict())
    assert geometry == scan.geometry
    back = tmp_path / "prediction.nii.gz"
    nib.save(to_nifti(scan.array, geometry), str(back))
    reloaded = nib.load(str(back))
    np.testing.assert_array_equal(np.asarray(reloaded.dataobj), data_xyz)
    np.testing.assert_array_equal(reloaded.affine, on_disk_affine)


def test_nifti_permuted_axes_first_file_axis_is_superior(tmp_path):
    canonical = canonical_volume()
    # file axis 0 -> S (3.0 mm), axis 1 -> P (0.7 mm), axis 2 -> R (0.8 mm)
    data = np.transpose(canonical[:, ::-1, :], (0, 1, 2)).copy()  # file[i=z, j=flipped y, k=x]
    affine = np.zeros((4, 4))
    affine[2, 0] = SPACING_ZYX[0]
    affine[1, 1] = -SPACING_ZYX[1]
    affine[0, 2] = SPACING_ZYX[2]
    affine[3, 3] = 1.0
    affine[:3, 3] = world_ras(0, NY - 1, 0)
    path = tmp_path / "permuted.nii"
    save_nifti(path, data, affine)

    scan = read_scan(path)

    assert scan.geometry.source_axcodes == ("S", "P", "R")
    assert scan.geometry.source_shape == (NZ, NY, NX)
    np.testing.assert_array_equal(scan.array, canonical)
    assert scan.geometry.spacing == pytest.approx(SPACING_ZYX, abs=1e-6)
    np.testing.assert_allclose(scan.geometry.affine, canonical_affine(), atol=1e-5)
    assert_world_consistent(scan, data, nib.load(str(path)).affine)
    np.testing.assert_array_equal(to_source(scan.array, scan.geometry), data)
    np.testing.assert_array_equal(to_nifti(scan.array, scan.geometry).affine, nib.load(str(path)).affine)


def test_nifti_oblique_affine_maps_to_closest_canonical(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.integers(0, 1000, size=(5, 4, 3)).astype(np.float32)
    angle = np.deg2rad(10)
    rotation = np.array(
        [[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]]
    )
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([-1.5, 2.0, -2.5])
    affine[:3, 3] = [10, -5, 30]
    path = tmp_path / "oblique.nii.gz"
    save_nifti(path, data, affine)

    scan = read_scan(path)

    assert scan.geometry.source_axcodes == ("L", "A", "I")
    assert scan.array.shape == (3, 4, 5)
    np.testing.assert_array_equal(scan.array, np.transpose(data[::-1, :, ::-1], (2, 1, 0)))
    assert scan.geometry.spacing == pytest.approx((2.5, 2.0, 1.5), abs=1e-5)
    assert_world_consistent(scan, data, nib.load(str(path)).affine)
    np.testing.assert_array_equal(to_source(scan.array, scan.geometry), data)


def test_nifti_4d_channels_last_becomes_channels_first(tmp_path):
    data_xyz, affine = lps_like_nifti_source()
    second = (data_xyz * 2).astype(np.int16)
    data = np.stack([data_xyz, second], axis=-1)  # (x, y, z, c) as MSD stores modalities
    path = tmp_path / "multi.nii.gz"
    save_nifti(path, data, affine)

    scan = read_scan(path)

    assert scan.array.shape == (2, NZ, NY, NX)
    assert scan.channels == 2
    np.testing.assert_array_equal(scan.array[0], canonical_volume())
    np.testing.assert_array_equal(scan.array[1], canonical_volume() * 2)
    first = scan.channel(1)
    assert first.array.shape == (NZ, NY, NX)
    assert first.channels == 1
    np.testing.assert_array_equal(first.array, canonical_volume() * 2)
    assert first.geometry.spacing == pytest.approx(SPACING_ZYX, abs=1e-6)
    np.testing.assert_array_equal(to_source(first.array, first.geometry), second)
    with pytest.raises(ReadError, match="2 channels, channel 2"):
        scan.channel(2)
    with pytest.raises(ReadError, match="channel -1"):
        scan.channel(-1)


def test_nifti_4d_with_singleton_time_axis(tmp_path):
    data = np.arange(3 * 4 * 2 * 1 * 2, dtype=np.int16).reshape(3, 4, 2, 1, 2)  # (x, y, z, t=1, c)
    path = tmp_path / "five_d.nii.gz"
    save_nifti(path, data, np.eye(4))

    scan = read_scan(path)

    assert scan.array.shape == (2, 2, 4, 3)
    np.testing.assert_array_equal(scan.array[1], np.transpose(data[:, :, :, 0, 1], (2, 1, 0)))


def test_nifti_2d_reads_as_one_slice(tmp_path):
    data = np.arange(4 * 3, dtype=np.uint8).reshape(4, 3)  # (x, y)
    affine = np.diag([0.5, 0.6, 1.0, 1.0])
    path = tmp_path / "slice.nii.gz"
    save_nifti(path, data, affine)

    scan = read_scan(path)

    assert scan.array.shape == (1, 3, 4)
    np.testing.assert_array_equal(scan.array[0], data.T)
    assert scan.geometry.spacing == pytest.approx((1.0, 0.6, 0.5))
    assert scan.channels == 1
    assert scan.channel(0) is scan
    with pytest.raises(ReadError, match="one channel"):
        scan.channel(1)
    np.testing.assert_array_equal(to_source(scan.array, scan.geometry)[:, :, 0], data)


def test_canonicalize_and_to_source_are_inverse_for_every_orientation():
    rng = np.random.default_rng(1)
    data = rng.integers(0, 100, size=(2, 3, 4)).astype(np.int16)
    for permutation in ((0, 1, 2), (1, 2, 0), (2, 0, 1), (0, 2, 1)):
        for signs in ((1, 1, 1), (-1, 1, -1), (-1, -1, 1), (1, -1, -1)):
            affine = np.eye(4)
            affine[:3, :3] = 0
            for axis, (world, sign) in enumerate(zip(permutation, signs)):
                affine[world, axis] = sign * (axis + 1.5)
            canonical, geometry = canonicalize(data, affine)
            assert_canonical_ras(geometry)
            assert sorted(canonical.shape) == sorted(data.shape)
            np.testing.assert_array_equal(to_source(canonical, geometry), data)
            for slice_axis in (0, 1, 2):  # the file axis kept as slices, whatever its direction
                kept, kept_geometry = canonicalize(data, affine, slice_axis=slice_axis)
                assert kept.shape[0] == data.shape[slice_axis]
                assert stored_shape(kept_geometry) == kept.shape
                np.testing.assert_array_equal(to_source(kept, kept_geometry), data)
                for axis, code in enumerate(kept_geometry.axcodes):  # every stored axis points the positive way
                    column = np.asarray(kept_geometry.affine)[:3, axis]
                    assert code in "RAS" and column["RAS".index(code)] > 0 and np.argmax(np.abs(column)) == "RAS".index(code)


# ----------------------------------------------------------------------------------------------
# 2. Cross-format geometry agreement: NIfTI, MHA, NRRD, DICOM series
# ----------------------------------------------------------------------------------------------


def lps_stack() -> np.ndarray:
    """The reference volume as ITK / DICOM store it with identity LPS direction: (z, rows=P, cols=L)."""
    return canonical_volume()[:, ::-1, ::-1].copy()


def lps_origin() -> np.ndarray:
    """LPS position of the first stored voxel of `lps_stack` (column 0, row 0, slice 0)."""
    return (LPS_TO_RAS[:3, :3] @ world_ras(NX - 1, NY - 1, 0))


def write_itk(path, array_zyx: np.ndarray, direction_lps: np.ndarray, origin_lps: np.ndarray) -> None:
    image = sitk.GetImageFromArray(array_zyx)
    image.SetSpacing((SPACING_ZYX[2], SPACING_ZYX[1], SPACING_ZYX[0]))
    image.SetOrigin(tuple(float(v) for v in origin_lps))
    image.SetDirection(tuple(float(v) for v in np.asarray(direction_lps).ravel()))
    sitk.WriteImage(image, str(path))


def ct_slice(path, pixels: np.ndarray, position_lps, series_uid: str, instance: int) -> None:
    """A minimal valid CT Image Storage file: one slice, uint16 stored, HU = stored - 1024."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    ds.SeriesInstanceUID = series_uid
    ds.Modality = "CT"
    ds.PatientID = "PHANTOM"
    ds.InstanceNumber = instance
    ds.ImagePositionPatient = [f"{v:.6g}" for v in position_lps]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.PixelSpacing = [f"{SPACING_ZYX[1]:g}", f"{SPACING_ZYX[2]:g}"]  # [row spacing, column spacing]
    ds.SliceThickness = f"{SPACING_ZYX[0]:g}"
    ds.RescaleSlope = "1"
    ds.RescaleIntercept = "-1024"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<u2").tobytes()
    ds.save_as(str(path), enforce_file_format=True)


def write_dicom_series(folder, series_uid: str | None = None, seed: int = 0) -> None:
    """One file per slice, named in shuffled order so only ImagePositionPatient gives the order."""
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    stored = (lps_stack().astype(np.int32) + 1024).astype(np.uint16)
    names = list(range(NZ))
    random.Random(seed).shuffle(names)
    if names == sorted(names):
        names = names[::-1]
    origin = lps_origin()
    for k in range(NZ):
        position = origin + np.array([0.0, 0.0, SPACING_ZYX[0] * k])
        # file names sort opposite to the instance numbers and to the slice positions
        ct_slice(folder / f"IM{names[k]:04d}", stored[k], position, series_uid, instance=NZ - k)


def test_cross_format_geometry_agrees(tmp_path):
    data_xyz, affine = lps_like_nifti_source()
    save_nifti(tmp_path / "vol.nii.gz", data_xyz, affine)
    write_itk(tmp_path / "vol.mha", lps_stack(), np.eye(3), lps_origin())
    # NRRD with a different but equivalent layout: x runs to R, y to A in LPS direction cosines.
    write_itk(
        tmp_path / "vol.nrrd",
        canonical_volume(),
        np.diag([-1.0, -1.0, 1.0]),
        LPS_TO_RAS[:3, :3] @ ORIGIN_RAS,
    )
    write_dicom_series(tmp_path / "dicom")

    scans = {
        name: read_scan(tmp_path / name) for name in ("vol.nii.gz", "vol.mha", "vol.nrrd", "dicom")
    }

    assert format_of(tmp_path / "vol.mha") == "itk"
    assert format_of(tmp_path / "vol.nrrd") == "itk"
    assert format_of(tmp_path / "dicom") == "dicom"
    for name, scan in scans.items():
        assert scan.array.shape == (NZ, NY, NX), name
        np.testing.assert_array_equal(scan.array, canonical_volume(), err_msg=name)
        np.testing.assert_allclose(scan.geometry.affine, canonical_affine(), atol=1e-4, err_msg=name)
        assert scan.geometry.spacing == pytest.approx(SPACING_ZYX, abs=1e-5), name
        assert scan.geometry.spacing_known is True
        assert_canonical_ras(scan.geometry)
    assert scans["dicom"].array.dtype == np.float32  # rescaled to HU, not left as uint16
    assert scans["vol.mha"].geometry.source_axcodes == ("L", "P", "S")
    assert scans["dicom"].geometry.source_axcodes == ("L", "P", "S")
    assert scans["vol.nrrd"].geometry.source_axcodes == ("R", "A", "S")


def test_itk_permuted_direction_agrees_with_world(tmp_path):
    # ITK axis 0 runs along S, axis 1 along L, axis 2 along A (LPS direction columns); the matrix
    # is not symmetric, so reading it transposed would show.
    direction = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]])
    rng = np.random.default_rng(2)
    array = rng.integers(-500, 500, size=(3, 4, 5)).astype(np.int16)  # numpy (k, j, i)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((2.0, 0.5, 1.25))
    image.SetOrigin((4.0, -3.0, 7.5))
    image.SetDirection(tuple(direction.ravel()))
    path = tmp_path / "perm.mha"
    sitk.WriteImage(image, str(path))

    scan = read_scan(path)

    assert_canonical_ras(scan.geometry)
    source_xyz = np.transpose(array, (2, 1, 0))
    source_affine = np.eye(4)
    source_affine[:3, :3] = direction * np.array([2.0, 0.5, 1.25])
    source_affine[:3, 3] = [4.0, -3.0, 7.5]
    assert_world_consistent(scan, source_xyz, LPS_TO_RAS @ source_affine)
    # axis 0 (2.0 mm) runs along S: canonical z; axis 2 (1.25 mm) along A: y; axis 1 (0.5 mm) along L: x
    assert scan.geometry.spacing == pytest.approx((2.0, 1.25, 0.5))
    assert scan.array.shape == (5, 3, 4)  # ITK size (i, j, k) = (5, 4, 3)
    assert scan.geometry.source_axcodes == ("S", "L", "A")
    # canonical x runs to R, which is against ITK axis 1 (L): flipped
    np.testing.assert_array_equal(scan.array, np.transpose(source_xyz, (0, 2, 1))[:, :, ::-1])


def test_dicom_folder_ignores_non_dicom_files(tmp_path):
    folder = tmp_path / "series"
    write_dicom_series(folder, seed=3)
    (folder / "README.txt").write_text("exported by a scanner console\n")
    (folder / ".DS_Store").write_bytes(b"\x00\x01junk")

    scan = read_scan(folder)

    np.testing.assert_array_equal(scan.array, canonical_volume())
    np.testing.assert_allclose(scan.geometry.affine, canonical_affine(), atol=1e-4)


def test_dicom_single_file_reads_as_one_slice(tmp_path):
    folder = tmp_path / "series"
    write_dicom_series(folder)
    single = tmp_path / "slice.dcm"
    single.write_bytes(next(folder.iterdir()).read_bytes())

    scan = read_scan(single)

    assert scan.array.shape == (1, NY, NX)
    assert scan.geometry.spacing == pytest.approx(SPACING_ZYX, abs=1e-5)
    hu = canonical_volume()
    assert any(np.array_equal(scan.array[0], hu[k]) for k in range(NZ))


def compress_slice(file, syntax: str, tmp_path) -> None:
    """Rewrite one slice of `write_dicom_series` with its pixel data compressed in `syntax`:
    RLE Lossless by pydicom's own encoder; JPEG 2000 lossless and JPEG baseline (8-bit, lossy) encoded
    by Pillow; JPEG lossless (process 14) by GDCM through SimpleITK, which pydicom alone cannot decode."""
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEG2000Lossless, JPEGBaseline8Bit, RLELossless

    ds = pydicom.dcmread(str(file))
    stored = ds.pixel_array
    if syntax == "rle":
        ds.compress(RLELossless)
    elif syntax == "jpeg-lossless":
        image = sitk.GetImageFromArray(stored.astype(np.uint16)[np.newaxis])
        writer = sitk.ImageFileWriter()
        writer.SetImageIO("GDCMImageIO")
        writer.SetUseCompression(True)
        writer.SetCompressor("JPEG")  # GDCM's JPEG is lossless, process 14
        writer.SetFileName(str(tmp_path / "gdcm.dcm"))
        writer.Execute(image)
        encoded = pydicom.dcmread(str(tmp_path / "gdcm.dcm"))
        ds.file_meta.TransferSyntaxUID = encoded.file_meta.TransferSyntaxUID
        ds.PixelData = encoded.PixelData
    else:
        if syntax == "jpeg-baseline":  # 8 bits stored: 4 HU per level
            stored = np.round(stored / 4).astype(np.uint8)
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.RescaleSlope = 8, 8, 7, "4"
            picture, uid, options = Image.fromarray(stored, mode="L"), JPEGBaseline8Bit, {"format": "JPEG", "quality": 100}
        else:
            picture, uid, options = Image.fromarray(stored.astype(np.uint16)), JPEG2000Lossless, {
                "format": "JPEG2000", "irreversible": False, "no_jp2": True}
        encoded = io.BytesIO()
        picture.save(encoded, **options)
        ds.file_meta.TransferSyntaxUID = uid
        ds.PixelData = encapsulate([encoded.getvalue()])
        ds["PixelData"].VR = "OB"
    ds.save_as(str(file), enforce_file_format=True)


@pytest.mark.parametrize("syntax", ["rle", "jpeg2000", "jpeg-lossless", "jpeg-baseline"])
def test_a_compressed_dicom_series_reads_like_the_uncompressed_one(tmp_path, syntax):
    folder = tmp_path / syntax
    write_dicom_series(folder)
    for file in folder.iterdir():
        compress_slice(file, syntax, tmp_path)
    assert pydicom.dcmread(str(next(folder.iterdir()))).file_meta.TransferSyntaxUID.is_compressed

    scan = read_scan(folder)

    assert scan.array.shape == (NZ, NY, NX)
    if syntax == "jpeg-baseline":  # lossy, and 8 bits: within a few 4-HU levels
        np.testing.assert_allclose(scan.array, canonical_volume(), atol=4 * 3)
    else:
        np.testing.assert_array_equal(scan.array, canonical_volume())
    np.testing.assert_allclose(scan.geometry.affine, canonical_affine(), atol=1e-4)


def test_dicom_folder_with_a_missing_slice_is_refused(tmp_path):
    folder = tmp_path / "gap"
    write_dicom_series(folder)
    middle = sorted(
        folder.iterdir(), key=lambda f: float(pydicom.dcmread(str(f)).ImagePositionPatient[2])
    )[1]
    middle.unlink()
    assert_read_error(folder, "uneven", "missing")


def test_dicom_folder_with_duplicate_positions_is_refused(tmp_path):
    folder = tmp_path / "dup"
    write_dicom_series(folder)
    first = sorted(folder.iterdir())[0]
    duplicate = pydicom.dcmread(str(first))
    duplicate.SOPInstanceUID = generate_uid()
    duplicate.save_as(str(folder / "copy"))
    assert_read_error(folder, "share one ImagePositionPatient")


def test_multiframe_dicom_is_refused_clearly(tmp_path):
    folder = tmp_path / "multiframe"
    folder.mkdir()
    path = folder / "frames.dcm"
    ct_slice(path, np.zeros((NY, NX), dtype=np.uint16), [0, 0, 0], generate_uid(), 1)
    dataset = pydicom.dcmread(str(path))
    dataset.NumberOfFrames = 2
    dataset.PixelData = np.zeros((2, NY, NX), dtype="<u2").tobytes()
    dataset.save_as(str(path))
    assert_read_error(folder, "multi-frame")


def test_dicom_folder_with_two_series_is_refused(tmp_path):
    folder = tmp_path / "mixed"
    write_dicom_series(folder, series_uid=generate_uid())
    other = tmp_path / "other"
    write_dicom_series(other, series_uid=generate_uid())
    for index, file in enumerate(sorted(other.iterdir())):
        file.rename(folder / f"B{index:04d}")

    with pytest.raises(ReadError) as caught:
        read_scan(folder)

    assert str(folder) in str(caught.value)
    assert "2 DICOM series" in str(caught.value)


def test_empty_dicom_folder_is_refused(tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    with pytest.raises(ReadError, match="no DICOM images") as caught:
        read_scan(folder)
    assert caught.value.path == str(folder)


def test_folder_of_only_non_dicom_files_is_refused(tmp_path):
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "README.txt").write_text("nothing to see")
    with pytest.raises(ReadError, match="no DICOM images"):
        read_scan(folder)


# ----------------------------------------------------------------------------------------------
# 4. Pictures
# ----------------------------------------------------------------------------------------------


def grey_picture(height: int = 7, width: int = 9, dtype=np.uint8) -> np.ndarray:
    top = 255 if dtype == np.uint8 else 65535
    values = np.linspace(0, top, height * width).reshape(height, width)
    return values.astype(dtype)


@pytest.mark.parametrize("suffix", [".png", ".bmp"])
def test_lossless_8bit_picture(tmp_path, suffix):
    grey = grey_picture()
    path = tmp_path / f"slice{suffix}"
    Image.fromarray(grey).save(path)

    scan = read_scan(path)

    assert format_of(path) == "picture"
    assert scan.array.shape == (1, 7, 9)
    np.testing.assert_array_equal(scan.array[0], grey)
    assert scan.geometry.spacing_known is False
    assert scan.geometry.spacing == (1.0, 1.0, 1.0)
    np.testing.assert_array_equal(scan.geometry.affine, np.eye(4))


def test_16bit_png_keeps_full_range(tmp_path):
    grey = grey_picture(dtype=np.uint16)
    path = tmp_path / "slice16.png"
    Image.fromarray(grey).save(path)

    scan = read_scan(path)

    assert scan.array.shape == (1, 7, 9)
    assert scan.array.max() == 65535
    np.testing.assert_array_equal(scan.array[0].astype(np.int64), grey.astype(np.int64))
    assert scan.geometry.spacing_known is False


def test_jpeg_reads_close_to_what_was_written(tmp_path):
    grey = np.full((16, 24), 120, dtype=np.uint8)
    grey[:, 12:] = 180
    path = tmp_path / "slice.jpg"
    Image.fromarray(grey).save(path, quality=95)

    scan = read_scan(path)

    assert scan.array.shape == (1, 16, 24)
    assert np.abs(scan.array[0].astype(int) - grey.astype(int)).max() <= 8
    assert scan.geometry.spacing_known is False


def test_rgb_png_with_equal_channels_gives_grey_exactly(tmp_path):
    grey = grey_picture()
    path = tmp_path / "rgb.png"
    Image.fromarray(np.stack([grey] * 3, axis=-1)).save(path)

    scan = read_scan(path)

    assert scan.array.shape == (1, 7, 9)
    np.testing.assert_array_equal(scan.array[0], grey)


def test_rgba_and_grey_alpha_pngs_give_grey(tmp_path):
    grey = grey_picture()
    alpha = np.full_like(grey, 200)
    Image.fromarray(np.stack([grey, grey, grey, alpha], axis=-1)).save(tmp_path / "rgba.png")
    Image.fromarray(np.stack([grey, alpha], axis=-1), mode="LA").save(tmp_path / "la.png")

    for name in ("rgba.png", "la.png"):
        scan = read_scan(tmp_path / name)
        assert scan.array.shape == (1, 7, 9), name
        np.testing.assert_array_equal(scan.array[0], grey, err_msg=name)


def test_palette_png_gives_grey_values_not_palette_indices(tmp_path):
    indices = (np.arange(6 * 5).reshape(6, 5) % 4).astype(np.uint8)
    levels = np.array([180, 120, 60, 0], dtype=np.uint8)  # index i shows grey level levels[i]
    picture = Image.frombytes("P", (5, 6), indices.tobytes())
    picture.putpalette(np.repeat(levels, 3).tolist())
    path = tmp_path / "palette.png"
    picture.save(path)
    with Image.open(path) as check:
        assert check.mode == "P"

    scan = read_scan(path)

    assert scan.array.shape == (1, 6, 5)
    np.testing.assert_array_equal(scan.array[0], levels[indices])


def test_opaque_white_grey_alpha_png(tmp_path):
    # grey equal to alpha everywhere: a two-channel array must not be taken for RGB
    white = np.full((3, 4), 255, dtype=np.uint8)
    path = tmp_path / "white.png"
    Image.fromarray(np.stack([white, white], axis=-1), mode="LA").save(path)

    scan = read_scan(path)

    assert scan.array.shape == (1, 3, 4)
    np.testing.assert_array_equal(scan.array[0], white)


def test_colour_png_is_converted_to_luminance(tmp_path):
    rgb = np.zeros((4, 5, 3), dtype=np.uint8)
    rgb[..., 0] = 200
    rgb[..., 2] = 40
    path = tmp_path / "colour.png"
    Image.fromarray(rgb).save(path)

    scan = read_scan(path)

    assert scan.array.shape == (1, 4, 5)
    np.testing.assert_array_equal(scan.array[0], np.asarray(Image.fromarray(rgb).convert("L")))


# ----------------------------------------------------------------------------------------------
# 5. HDF5
# ----------------------------------------------------------------------------------------------


def test_hdf5_volume_image_and_label_keys(tmp_path):
    image = np.random.default_rng(3).random((3, 8, 10)).astype(np.float32)
    label = (image > 0.5).astype(np.uint8)
    path = tmp_path / "case.h5"
    with h5py.File(path, "w") as file:
        file["image"] = image
        file["label"] = label

    default = read_scan(path)
    chosen_image = read_scan(path, key="image")
    chosen_label = read_scan(path, key="label")

    assert format_of(path) == "hdf5"
    np.testing.assert_array_equal(default.array, image)
    np.testing.assert_array_equal(chosen_image.array, image)
    np.testing.assert_array_equal(chosen_label.array, label)
    assert chosen_label.array.dtype == np.uint8
    assert default.geometry.spacing_known is False
    assert default.geometry.source_shape == (10, 8, 3)


def test_hdf5_slice_is_one_plane(tmp_path):
    image = np.arange(6 * 4, dtype=np.float32).reshape(6, 4)
    path = tmp_path / "slice.h5"
    with h5py.File(path, "w") as file:
        file["image"] = image
        file["label"] = image > 10

    scan = read_scan(path)
    label = read_scan(path, key="label")

    assert scan.array.shape == (1, 6, 4)
    np.testing.assert_array_equal(scan.array[0], image)
    np.testing.assert_array_equal(label.array[0], image > 10)


def test_hdf5_missing_key_names_key_and_lists_available(tmp_path):
    path = tmp_path / "case.h5"
    with h5py.File(path, "w") as file:
        file["image"] = np.zeros((2, 3, 4))
        file["label"] = np.zeros((2, 3, 4), dtype=np.uint8)

    with pytest.raises(ReadError) as caught:
        read_scan(path, key="mask")

    message = str(caught.value)
    assert str(path) in message
    assert "'mask'" in message
    assert "image" in message and "label" in message


def test_hdf5_slice_axis_reads_h_w_d_volumes_the_right_way_up(tmp_path):
    # a release that stores (H, W, D), as SSL4MIS's left-atrium volumes do: slice k is [:, :, k]
    volume = np.random.default_rng(4).random((3, 8, 10)).astype(np.float32)  # (D, H, W)
    stored = np.ascontiguousarray(np.transpose(volume, (1, 2, 0)))  # (H, W, D)
    path = tmp_path / "hwd.h5"
    with h5py.File(path, "w") as file:
        file["image"] = stored
        file["slice"] = volume[0]

    sideways = read_scan(path)  # the default (D, H, W) reads it sideways: 8 slices of 10 x 3
    assert sideways.array.shape == (8, 10, 3)
    for axis in (2, -1):
        scan = read_scan(path, slice_axis=axis)
        np.testing.assert_array_equal(scan.array, volume)
        assert scan.geometry.source_shape == (10, 8, 3) and not scan.geometry.spacing_known
    np.testing.assert_array_equal(read_scan(path, key="slice", slice_axis=2).array, volume[:1])  # 2-D: one slice
    with pytest.raises(ReadError, match="slice_axis 3 is not an axis"):
        read_scan(path, slice_axis=3)


def test_slice_axis_of_npy_and_mat_and_refused_for_pictures(tmp_path):
    volume = np.arange(2 * 3 * 4, dtype=np.int16).reshape(2, 3, 4)
    np.save(tmp_path / "hwd.npy", np.transpose(volume, (1, 2, 0)))
    scipy.io.savemat(str(tmp_path / "hwd.mat"), {"v": np.transpose(volume, (1, 2, 0))})
    np.testing.assert_array_equal(read_scan(tmp_path / "hwd.npy", slice_axis=2).array, volume)
    np.testing.assert_array_equal(read_scan(tmp_path / "hwd.mat", slice_axis=-1).array, volume)
    Image.fromarray(np.zeros((4, 5), np.uint8)).save(tmp_path / "p.png")
    with pytest.raises(ReadError, match="one 2-D slice"):
        read_scan(tmp_path / "p.png", slice_axis=2)


def test_nifti_slice_axis_keeps_the_acquisition_planes_of_an_oblique_stack(tmp_path):
    # a cardiac short-axis stack: in-plane axes tilted so that the first lies nearest superior
    rotation = np.array([[0.6, 0.0, 0.8], [0.0, 1.0, 0.0], [0.8, 0.0, -0.6]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([1.25, 1.25, 8.0])  # file axis 0 nearest S, the slice axis nearest R
    affine[:3, 3] = (10.0, -20.0, 30.0)
    data = np.random.default_rng(5).random((12, 10, 4)).astype(np.float32)  # 4 slices of 12 x 10
    path = tmp_path / "sax.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), path)

    closest = read_scan(path)
    kept = read_scan(path, slice_axis=2)
    assert closest.array.shape[0] == 12, "closest canonical cuts across the stack"
    assert kept.array.shape == (4, 12, 10)  # in-plane: A (file axis 1) is x, S (file axis 0) is y
    assert kept.geometry.axcodes == ("A", "S", "R")
    assert kept.geometry.spacing == pytest.approx((8.0, 1.25, 1.25))
    # exactly invertible, and the stored affine maps every voxel where the file's does
    restored = to_nifti(kept.array, kept.geometry)
    np.testing.assert_array_equal(np.asarray(restored.dataobj), data)
    np.testing.assert_allclose(restored.affine, affine)
    stored_affine = np.asarray(kept.geometry.affine)
    for z, y, x in ((0, 0, 0), (3, 2, 5), (1, kept.array.shape[1] - 1, kept.array.shape[2] - 1)):
        world = stored_affine @ (x, y, z, 1.0)
        i, j, k, _ = np.rint(np.linalg.inv(affine) @ world).astype(int)
        assert kept.array[z, y, x] == data[i, j, k]
    assert Geometry.from_dict(kept.geometry.to_dict()) == kept.geometry
    legacy = {k: v for k, v in closest.geometry.to_dict().items() if k != "axcodes"}  # a store from before
    assert Geometry.from_dict(legacy).axcodes == ("R", "A", "S")


def test_ima_files_are_dicom(tmp_path):
    assert format_of(tmp_path / "L096_0039.IMA") == "dicom"


# ----------------------------------------------------------------------------------------------
# 6. MATLAB and numpy
# ----------------------------------------------------------------------------------------------


def test_mat_v5_key_picks_a_variable(tmp_path):
    image = np.arange(2 * 3 * 4, dtype=np.float64).reshape(2, 3, 4)
    label = (image % 2).astype(np.uint8)
    path = tmp_path / "case.mat"
    scipy.io.savemat(str(path), {"img": image, "seg": label})

    assert format_of(path) == "mat"
    np.testing.assert_array_equal(read_scan(path, key="img").array, image)
    np.testing.assert_array_equal(read_scan(path, key="seg").array, label)
    with pytest.raises(ReadError, match="holds 2 arrays.*img, seg.*key"):
        read_scan(path)
    with pytest.raises(ReadError, match="no variable 'mask'.*img, seg"):
        read_scan(path, key="mask")


def test_mat_v5_single_variable_needs_no_key(tmp_path):
    image = np.arange(5 * 6, dtype=np.int16).reshape(5, 6)
    path = tmp_path / "slice.mat"
    scipy.io.savemat(str(path), {"slice": image})

    scan = read_scan(path)

    assert scan.array.shape == (1, 5, 6)
    np.testing.assert_array_equal(scan.array[0], image)
    assert scan.geometry.spacing_known is False


def test_npy_volume_and_slice(tmp_path):
    volume = np.arange(2 * 3 * 4, dtype=np.int16).reshape(2, 3, 4)
    np.save(tmp_path / "vol.npy", volume)
    np.save(tmp_path / "slice.npy", volume[0])

    assert format_of(tmp_path / "vol.npy") == "numpy"
    np.testing.assert_array_equal(read_scan(tmp_path / "vol.npy").array, volume)
    sliced = read_scan(tmp_path / "slice.npy")
    assert sliced.array.shape == (1, 3, 4)
    np.testing.assert_array_equal(sliced.array[0], volume[0])


def test_npy_with_wrong_dimensions_is_refused(tmp_path):
    path = tmp_path / "line.npy"
    np.save(path, np.arange(5))
    with pytest.raises(ReadError, match="shape"):
        read_scan(path)


def test_npz_key_picks_an_entry(tmp_path):
    image = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    label = (image > 5).astype(np.uint8)
    path = tmp_path / "case.npz"
    np.savez(path, image=image, label=label)
    single = tmp_path / "single.npz"
    np.savez_compressed(single, data=image)

    np.testing.assert_array_equal(read_scan(path, key="image").array, image)
    np.testing.assert_array_equal(read_scan(path, key="label").array, label)
    with pytest.raises(ReadError, match="holds 2 arrays"):
        read_scan(path)
    with pytest.raises(ReadError, match="no variable 'mask'.*image, label"):
        read_scan(path, key="mask")
    np.testing.assert_array_equal(read_scan(single).array, image)


# ----------------------------------------------------------------------------------------------
# 7. Errors: always a ReadError naming the file and the problem
# ----------------------------------------------------------------------------------------------


def assert_read_error(path, *fragments: str, **kwargs) -> ReadError:
    with pytest.raises(ReadError) as caught:
        read_scan(path, **kwargs)
    message = str(caught.value)
    assert caught.value.path == str(path)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message, message
    return caught.value


@pytest.mark.parametrize("name", ["empty.nii.gz", "empty.png", "empty.h5", "empty.npy", "empty.mha"])
def test_empty_file(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"")
    assert_read_error(path, "empty", "0 bytes")


def test_truncated_nifti(tmp_path):
    rng = np.random.default_rng(4)
    data = rng.integers(0, 4000, size=(32, 32, 16)).astype(np.int16)
    whole = tmp_path / "whole.nii.gz"
    save_nifti(whole, data, np.eye(4))
    payload = whole.read_bytes()
    path = tmp_path / "truncated.nii.gz"
    path.write_bytes(payload[: len(payload) // 2])

    assert_read_error(path, "truncated")


def test_truncated_uncompressed_nifti(tmp_path):
    data = np.arange(16 * 16 * 8, dtype=np.int16).reshape(16, 16, 8)
    whole = tmp_path / "whole.nii"
    save_nifti(whole, data, np.eye(4))
    payload = whole.read_bytes()
    path = tmp_path / "truncated.nii"
    path.write_bytes(payload[: len(payload) // 2])

    assert_read_error(path, "cannot be read as nifti", "damaged")


def test_garbage_nifti(tmp_path):
    path = tmp_path / "garbage.nii.gz"
    path.write_bytes(bytes(range(256)) * 8)
    assert_read_error(path, "not a gzip file")


def test_gzip_of_garbage_is_not_nifti(tmp_path):
    path = tmp_path / "notnifti.nii.gz"
    path.write_bytes(gzip.compress(b"definitely not a NIfTI header" * 40))
    assert_read_error(path, "not a NIfTI file")


@pytest.mark.parametrize("name", ["garbage.png", "garbage.jpg", "garbage.h5", "garbage.mat", "garbage.mha"])
def test_garbage_in_other_formats(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"\x13\x37 not an image at all " * 20)
    error = assert_read_error(path, "cannot be read as")
    assert format_of(path) in error.problem


def test_garbage_npy_is_not_reported_as_pickled_data(tmp_path):
    path = tmp_path / "garbage.npy"
    path.write_bytes(b"\x13\x37 not an array " * 20)
    error = assert_read_error(path, "not a NumPy")
    assert "pickle" not in str(error)


def test_four_dimensional_itk_image_is_refused(tmp_path):
    path = tmp_path / "time.mha"
    sitk.WriteImage(sitk.Image([3, 4, 5, 2], sitk.sitkInt16), str(path))
    assert_read_error(path, "4-D image")


def test_unknown_suffix(tmp_path):
    path = tmp_path / "scan.xyz"
    path.write_bytes(b"something")
    assert_read_error(path, "unknown image format")


def test_missing_file(tmp_path):
    assert_read_error(tmp_path / "nowhere.nii.gz", "not found")


def test_read_error_is_a_value_error_with_parts():
    error = ReadError("/data/a.nii.gz", "file is empty (0 bytes)")
    assert isinstance(error, ValueError)
    assert error.path == "/data/a.nii.gz"
    assert error.problem == "file is empty (0 bytes)"
    assert str(error) == "/data/a.nii.gz: file is empty (0 bytes)"
