"""Voxel geometry: how an array in the store maps back to the scan it came from.

Every reader hands the rest of the pipeline one convention: a `(z, y, x)` array in the closest
canonical (RAS+) orientation, with a `Geometry` that remembers the source file's own affine,
shape and axis codes. That is enough to write a prediction back voxel-for-voxel in the input's
geometry (`to_source`), which is what a radiologist's viewer needs to overlay it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import nibabel as nib
import numpy as np
from nibabel import orientations

# Spacing is never invented: a reader that cannot know it says so and we record 1 mm.
UNKNOWN_SPACING = (1.0, 1.0, 1.0)


@dataclass(frozen=True)
class Geometry:
    """Geometry of a canonical `(z, y, x)` array and of the source it was read from.

    affine:          4x4 voxel (i=x, j=y, k=z) -> world RAS mm for the canonical array.
    spacing:         (z, y, x) voxel size in mm of the canonical array.
    spacing_known:   False for formats that carry none (PNG, HDF5, .mat, .npy).
    source_affine:   the file's own affine (nibabel convention), for writing back.
    source_shape:    the file's own spatial shape, in the file's axis order.
    source_axcodes:  the file's own orientation, e.g. ("L", "P", "S").
    axcodes:         the orientation of the stored array's (x, y, z) axes: RAS, the closest canonical
                     one, unless the file's acquisition plane was kept (`canonicalize`'s slice_axis),
                     e.g. ("R", "S", "A") for an oblique cardiac short-axis stack.
    """

    affine: tuple[tuple[float, ...], ...]
    spacing: tuple[float, float, float]
    spacing_known: bool
    source_affine: tuple[tuple[float, ...], ...]
    source_shape: tuple[int, ...]
    source_axcodes: tuple[str, str, str]
    axcodes: tuple[str, str, str] = ("R", "A", "S")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Geometry:
        return cls(
            affine=_as_tuple_matrix(data["affine"]),
            spacing=tuple(float(s) for s in data["spacing"]),
            spacing_known=bool(data["spacing_known"]),
            source_affine=_as_tuple_matrix(data["source_affine"]),
            source_shape=tuple(int(s) for s in data["source_shape"]),
            source_axcodes=tuple(data["source_axcodes"]),
            axcodes=tuple(data.get("axcodes", ("R", "A", "S"))),  # stores written before it existed: RAS
        )


def _as_tuple_matrix(matrix) -> tuple[tuple[float, ...], ...]:
    return tuple(tuple(float(v) for v in row) for row in np.asarray(matrix, dtype=float))


def canonicalize(data_xyz: np.ndarray, affine: np.ndarray, spacing_known: bool = True, slice_axis: int | None = None):
    """Reorient a nibabel-ordered `(x, y, z)` array to closest canonical RAS, return `(z, y, x)`.

    Only axis flips and permutations are applied (no resampling), so the mapping is exact and
    invertible by `to_source`. `slice_axis` (0, 1 or 2, a file axis) keeps that axis as the stored
    z, so that the slices are the acquisition planes: an oblique stack (cardiac short axis) would
    otherwise be cut along whichever in-plane axis lies nearest superior-inferior. The other two
    axes become x and y in R, A, S order, every axis flipped to point the positive way.
    """
    affine = np.asarray(affine, dtype=float)
    source_ornt = orientations.io_orientation(affine)
    axcodes = ("R", "A", "S")
    if slice_axis is not None:
        if not -3 <= slice_axis <= 2:
            raise ValueError(f"slice_axis {slice_axis} is not an axis of a 3-D image")
        world = [int(w) for w in source_ornt[:, 0]]  # the world axis (0 R, 1 A, 2 S) nearest each file axis
        slices = world[slice_axis % 3]
        in_plane = sorted(w for w in world if w != slices)
        axcodes = tuple("RAS"[w] for w in (*in_plane, slices))
    transform = orientations.ornt_transform(source_ornt, orientations.axcodes2ornt(axcodes))
    canonical = orientations.apply_orientation(data_xyz, transform)
    canonical_affine = affine @ orientations.inv_ornt_aff(transform, data_xyz.shape[:3])
    spacing_xyz = np.sqrt((canonical_affine[:3, :3] ** 2).sum(axis=0))
    geometry = Geometry(
        affine=_as_tuple_matrix(canonical_affine),
        spacing=tuple(float(s) for s in spacing_xyz[::-1]) if spacing_known else UNKNOWN_SPACING,
        spacing_known=spacing_known,
        source_affine=_as_tuple_matrix(affine),
        source_shape=tuple(int(s) for s in data_xyz.shape[:3]),
        source_axcodes=tuple(orientations.ornt2axcodes(source_ornt)),
        axcodes=axcodes,
    )
    return np.ascontiguousarray(np.transpose(canonical, (2, 1, 0))), geometry


def planar_geometry(shape_zyx: tuple[int, ...]) -> Geometry:
    """Geometry for arrays whose format carries none: identity affine, spacing unknown."""
    shape = tuple(int(s) for s in shape_zyx)
    identity = _as_tuple_matrix(np.eye(4))
    return Geometry(
        affine=identity,
        spacing=UNKNOWN_SPACING,
        spacing_known=False,
        source_affine=identity,
        source_shape=shape[::-1],
        source_axcodes=("R", "A", "S"),
    )


def to_source(data_zyx: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Inverse of `canonicalize`: a canonical `(z, y, x)` array back in the source's axis order."""
    data_xyz = np.transpose(data_zyx, (2, 1, 0))
    transform = orientations.ornt_transform(
        orientations.axcodes2ornt(geometry.axcodes),
        orientations.axcodes2ornt(geometry.source_axcodes),
    )
    return np.ascontiguousarray(orientations.apply_orientation(data_xyz, transform))


def stored_shape(geometry: Geometry) -> tuple[int, int, int]:
    """The (z, y, x) shape `canonicalize` gave the source: its axis sizes in the stored order."""
    world = {"R": 0, "L": 0, "A": 1, "P": 1, "S": 2, "I": 2}
    length_of = {world[code]: int(length) for code, length in zip(geometry.source_axcodes, geometry.source_shape)}
    x, y, z = (length_of[world[code]] for code in geometry.axcodes)
    return z, y, x


def to_nifti(data_zyx: np.ndarray, geometry: Geometry) -> nib.Nifti1Image:
    """A NIfTI image in the source's own geometry, ready for `nib.save`."""
    return nib.Nifti1Image(to_source(data_zyx, geometry), np.asarray(geometry.source_affine))
