"""Synthetic phantoms: small datasets in nnU-Net v2 raw layout with the awkward traits of real scans.

Why: every stage after this one (readers, ingest, the Zarr store, training, evaluation, `mvg demo`)
needs data that behaves like a download -- a scanner affine with anisotropic spacing and LPS axes,
Hounsfield units in int16, organs that stop short of the end slices, two-channel image-to-image
cases, PNG radiographs -- without fetching anything. `mvg phantoms` and the tests call
`write_phantoms`; `phantom_case` gives one case as arrays, without touching the disk.

Each case draws from its own generator, `np.random.default_rng([seed, index])`: a case depends only
on the seed and its index, so the same seed writes byte-identical files and a run with more cases
extends a run with fewer.

Shapes live on normalised coordinates (x, y in [-1, 1] across the field of view, z in [0, 1] from
the first to the last slice) and are evaluated only inside their bounding boxes, so a phantom looks
the same at any matrix size and a 512 x 512 x 100 abdomen takes about a second on one core.
"""

from __future__ import annotations

import json
import numbers
import os
import shutil
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from scipy import ndimage

PHANTOM_TASKS = ("segmentation", "synthesis", "inpainting", "denoising", "xray")

MIN_SIZE = 32  # below this the small organs shrink to a voxel or vanish
MIN_SLICES = 8  # room for empty end slices and organs between them

Region = tuple[tuple[slice, slice, slice], np.ndarray]  # a bounding box and the mask inside it


@dataclass(frozen=True)
class PhantomCase:
    """One generated case: its channels in file order, its label file (None when the task has
    none) and its voxel-to-RAS affine (None for 2-D PNG cases, which carry no geometry)."""

    channels: tuple[np.ndarray, ...]
    label: np.ndarray | None
    affine: np.ndarray | None


# ------------------------------------------------------------------------------ coordinates


@dataclass(frozen=True)
class _Grid:
    """Voxel-centre coordinates, normalised so that shapes are defined once for any matrix size.

    `z_keep` is the range of slices shapes may occupy: organs are painted on a grid whose ends are
    cut off, because real scans start and stop a little beyond the anatomy that is labelled.
    """

    x: np.ndarray
    y: np.ndarray
    z: np.ndarray
    z_keep: slice

    @classmethod
    def of(cls, size: int, slices: int) -> _Grid:
        across = ((np.arange(size) + 0.5) / size * 2 - 1).astype(np.float32)
        return cls(across, across, np.linspace(0, 1, slices, dtype=np.float32), slice(0, slices))

    @property
    def shape(self) -> tuple[int, int, int]:
        return len(self.x), len(self.y), len(self.z)

    def without_ends(self, slices: int) -> _Grid:
        return replace(self, z_keep=slice(slices, len(self.z) - slices))

    def box(self, low, high) -> tuple[slice, slice, slice] | None:
        """The voxels whose centres lie within [low, high] (normalised x, y, z), or None."""
        spans = [
            [int(np.searchsorted(axis, lo)), int(np.searchsorted(axis, hi, side="right"))]
            for axis, lo, hi in zip((self.x, self.y, self.z), low, high)
        ]
        spans[2] = [max(spans[2][0], self.z_keep.start), min(spans[2][1], self.z_keep.stop)]
        if any(start >= stop for start, stop in spans):
            return None
        return tuple(slice(start, stop) for start, stop in spans)

    def local(self, box) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Broadcastable x (bx, 1, 1), y (1, by, 1) and z (1, 1, bz) coordinates of a box."""
        return self.x[box[0], None, None], self.y[None, box[1], None], self.z[None, None, box[2]]


def _scanner_affine(rng, size: int, pixel_mm: tuple[float, float], slice_mm: tuple[float, ...]):
    """The voxel -> RAS mm affine a DICOM-to-NIfTI converter writes for an axial scan.

    Voxel axes run toward the patient's left and posterior (LPS storage, so the first two diagonal
    entries are negative), slices are thicker than pixels are wide, the origin sits at a table
    position. Spacing is that of a scanner whatever the matrix size (a small matrix is a small field
    of view), so every size exercises anisotropy. Values are made float32-exact because the NIfTI
    header stores float32: the affine read back from a file equals the one the case reports.
    """
    pixel = rng.uniform(*pixel_mm)
    thickness = float(rng.choice(slice_mm))
    affine = np.diag([-pixel, -pixel, thickness, 1.0])
    affine[:3, 3] = (
        pixel * (size - 1) / 2 + rng.uniform(-15, 15),
        pixel * (size - 1) / 2 + rng.uniform(-60, -10),
        -rng.uniform(100, 600),
    )
    return affine.astype(np.float32).astype(np.float64)


# ------------------------------------------------------------------------------ shapes


def _ellipsoid(grid: _Grid, centre, radii, angle: float = 0.0, wobble: float = 0.0, lobes: int = 3,
               phase: float = 0.0) -> Region | None:
    """An ellipsoid turned by `angle` about z. `wobble` > 0 modulates its in-plane radius with
    `lobes` bumps, which turns a geometric solid into an organ-like outline."""
    cx, cy, cz = centre
    rx, ry, rz = radii
    reach = max(rx, ry) * (1 + wobble)
    box = grid.box((cx - reach, cy - reach, cz - rz), (cx + reach, cy + reach, cz + rz))
    if box is None:
        return None
    x, y, z = grid.local(box)
    cos, sin = np.float32(np.cos(angle)), np.float32(np.sin(angle))
    u = (x - cx) * cos + (y - cy) * sin
    v = (y - cy) * cos - (x - cx) * sin
    in_plane = (u / rx) ** 2 + (v / ry) ** 2
    if wobble:
        in_plane = in_plane / (1 + wobble * np.sin(lobes * np.arctan2(v / ry, u / rx) + phase)) ** 2
    return box, in_plane + ((z - cz) / rz) ** 2 <= 1


def _vessel(grid: _Grid, centre, radius: float, sway: float, phase: float) -> Region | None:
    """A tube along z whose centre sways and whose calibre narrows caudally, like the aorta."""
    cx, cy = centre
    reach = radius + sway
    box = grid.box((cx - reach, cy - reach, 0.0), (cx + reach, cy + reach, 1.0))
    if box is None:
        return None
    x, y, z = grid.local(box)
    bend = sway * np.sin(2 * np.pi * z + phase)
    calibre = radius * (0.8 + 0.2 * z)
    return box, (x - cx - bend) ** 2 + (y - cy - 0.5 * bend) ** 2 <= calibre**2


def _arched_tube(grid: _Grid, x_span, centre, radii, arch: float, tilt: float) -> Region | None:
    """A tube lying across x, arched forward and tapering from head to tail, like the pancreas."""
    (x0, x1), (cy, cz), (ry, rz) = x_span, centre, radii
    reach_y, reach_z = 1.2 * ry, abs(tilt) + 1.2 * rz
    box = grid.box((x0, cy - arch - reach_y, cz - reach_z), (x1, cy + reach_y, cz + reach_z))
    if box is None:
        return None
    x, y, z = grid.local(box)
    along = (x - x0) / (x1 - x0)
    taper = 1.2 - 0.6 * along
    y_centre = cy - arch * np.sin(np.pi * along)
    z_centre = cz + tilt * (along - 0.5)
    return box, ((y - y_centre) / (ry * taper)) ** 2 + ((z - z_centre) / (rz * taper)) ** 2 <= 1


def _paint(codes: np.ndarray, code: int, region: Region | None, over: tuple[int, ...]) -> None:
    """Give `code` to the region's voxels that now hold one of the `over` codes. Organs only
    displace soft tissue, so they never leave the body or cut bone, and where two organs claim a
    voxel the first painted keeps it."""
    if region is None:
        return
    box, inside = region
    target = codes[box]
    target[inside & np.isin(target, over)] = code


def _near(rng, values, spread: float) -> tuple[float, ...]:
    return tuple(float(v + rng.uniform(-spread, spread)) for v in values)


def _scaled(rng, values, spread: float) -> tuple[float, ...]:
    return tuple(float(v * rng.uniform(1 - spread, 1 + spread)) for v in values)


def _lookup(rng, ranges: dict[int, tuple[float, float]]) -> np.ndarray:
    """A per-case code -> value table, each value drawn from its tissue's range."""
    table = np.zeros(max(ranges) + 1, dtype=np.float32)
    for code, (low, high) in ranges.items():
        table[code] = rng.uniform(low, high)
    return table


# ------------------------------------------------------------------------------ CT torso

AIR, FAT, SOFT, BONE = 0, 1, 2, 3
TORSO_HU = {AIR: (-1000, -1000), FAT: (-115, -85), SOFT: (30, 55), BONE: (450, 750)}
MU_WATER = 0.0193  # linear attenuation of water per mm near 70 keV, the mean energy of a 120 kVp beam


def _torso(rng, grid: _Grid, ribs_from: float) -> np.ndarray:
    """Tissue codes (x, y, z) of a trunk: air around an elliptical body whose outline varies gently
    along z, a subcutaneous fat layer, soft tissue inside, ribs in the chest wall above z =
    `ribs_from`, and a vertebral column of bodies and discs behind. Only (x, y) and (z) arrays are
    combined by broadcasting, so no float volume is ever made."""
    half_width, half_depth = rng.uniform(0.8, 0.88), rng.uniform(0.56, 0.66)
    fat_ratio = rng.uniform(0.86, 0.93)
    outline = (grid.x[:, None] / half_width) ** 2 + (grid.y[None, :] / half_depth) ** 2
    swell = (1 + 0.04 * np.sin(2 * np.pi * (grid.z * rng.uniform(0.5, 1.5) + rng.uniform()))) ** 2
    codes = (outline[:, :, None] <= swell).view(np.uint8)  # FAT inside the body (bool -> 0/1 bytes, no copy)
    codes += outline[:, :, None] <= swell * fat_ratio**2  # SOFT inside the fat layer
    _add_ribs(rng, grid, codes, outline / fat_ratio**2, swell, ribs_from)
    spine_y = 0.62 * half_depth
    vertebrae = rng.uniform(4, 7) * grid.z + rng.uniform()  # one vertebra per unit
    discs = (vertebrae - np.floor(vertebrae) < 0.8)[None, None, :]
    for centre, radii in (((0.0, spine_y), (0.085, 0.08)), ((0.0, spine_y + 0.14), (0.025, 0.06))):
        box, inside = _ellipsoid(grid, (*centre, 0.5), (*radii, 2.0))
        _paint(codes, BONE, (box, inside & discs[:, :, box[2]]), over=(SOFT,))
    return codes


def _add_ribs(rng, grid: _Grid, codes: np.ndarray, wall: np.ndarray, swell: np.ndarray, ribs_from: float) -> None:
    """Ribs as a helix of bone just inside the soft-tissue boundary (`wall` is the squared in-plane
    radius relative to it, `swell` its per-slice scale), so each slice cuts a few short arcs, with a
    gap at the sternum. Evaluated only on the ring of voxel columns a rib can reach."""
    inner, outer = 0.8, 0.95
    ix, iy = np.nonzero((wall >= inner * swell.min()) & (wall <= outer * swell.max()))
    angle = np.arctan2(grid.y[iy], grid.x[ix])[:, None]
    z = grid.z[None, :]
    radius = wall[ix, iy][:, None] / swell[None, :]
    turns = rng.uniform(5, 8) * z + angle + rng.uniform()
    beside_sternum = np.abs(angle + np.pi / 2) > 0.35
    rib = (radius >= inner) & (radius <= outer) & (turns % 1 < 0.3) & beside_sternum & (z >= ribs_from)
    columns = codes[ix, iy, :]
    columns[rib & (columns == SOFT)] = BONE
    codes[ix, iy, :] = columns


def _hounsfield(rng, codes: np.ndarray, ranges: dict[int, tuple[float, float]], noise_hu: float) -> np.ndarray:
    """Tissue codes -> int16 HU, each tissue at a per-case level, plus rounded Gaussian noise of sd
    `noise_hu`. Works in place: at 512 x 512 x 100 each extra volume costs more than the arithmetic."""
    hu = np.rint(_lookup(rng, ranges)).astype(np.int16)[codes]
    if noise_hu:
        noise = rng.standard_normal(codes.shape, dtype=np.float32)
        noise *= noise_hu
        np.rint(noise, out=noise)
        np.add(hu, noise, out=hu, casting="unsafe")
        np.clip(hu, -1024, 3071, out=hu)
    return hu


def _int16_hu(hu: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(hu), -1024, 3071).astype(np.int16)


# ------------------------------------------------------------------------------ segmentation

ABDOMEN_ORGANS = ("liver", "spleen", "right kidney", "left kidney", "aorta", "stomach", "pancreas")
_ORGAN_CODE = {name: BONE + 1 + index for index, name in enumerate(ABDOMEN_ORGANS)}
_ABDOMEN_HU = TORSO_HU | {
    _ORGAN_CODE["liver"]: (50, 75),
    _ORGAN_CODE["spleen"]: (38, 55),
    _ORGAN_CODE["right kidney"]: (130, 190),
    _ORGAN_CODE["left kidney"]: (130, 190),
    _ORGAN_CODE["aorta"]: (150, 240),
    _ORGAN_CODE["stomach"]: (5, 30),
    _ORGAN_CODE["pancreas"]: (35, 55),
}
_ORGAN_LABEL = np.zeros(len(_ABDOMEN_HU), dtype=np.uint8)  # tissue code -> label value
for _label, _name in enumerate(ABDOMEN_ORGANS, start=1):
    _ORGAN_LABEL[_ORGAN_CODE[_name]] = _label


def _abdominal_organs(rng, grid: _Grid) -> Iterator[tuple[str, Region | None]]:
    """Organ regions in painting order (earlier wins), placed as in an axial abdominal CT seen from
    the feet: the patient's right (liver) at low x, posterior (spine, kidneys) at high y, cranial at
    high z. Position, size, turn and outline vary per case."""
    yield "aorta", _vessel(grid, _near(rng, (0.06, 0.2), 0.03), rng.uniform(0.035, 0.05), rng.uniform(0.0, 0.03),
                           rng.uniform(0, 2 * np.pi))
    for name, side, height in (("right kidney", -1, 0.42), ("left kidney", 1, 0.47)):
        yield name, _ellipsoid(grid, _near(rng, (side * 0.32, 0.3, height), 0.03),
                               _scaled(rng, (0.085, 0.13, 0.15), 0.15), side * rng.uniform(0.2, 0.5),
                               wobble=rng.uniform(0.0, 0.08), lobes=2, phase=rng.uniform(0, 2 * np.pi))
    yield "pancreas", _arched_tube(grid, _near(rng, (-0.12, 0.4), 0.04), _near(rng, (0.06, 0.55), 0.03),
                                   _scaled(rng, (0.05, 0.06), 0.2), rng.uniform(0.03, 0.1), rng.uniform(-0.1, 0.1))
    yield "spleen", _ellipsoid(grid, _near(rng, (0.52, 0.22, 0.72), 0.04), _scaled(rng, (0.09, 0.16, 0.12), 0.2),
                               rng.uniform(0.4, 0.8), wobble=rng.uniform(0.08, 0.16), lobes=2,
                               phase=rng.uniform(0, 2 * np.pi))
    for centre, radii, angle in (  # right lobe, left lobe, caudate: a lobed liver
        ((-0.35, -0.05, 0.72), (0.3, 0.32, 0.2), 0.0),
        ((0.02, -0.3, 0.78), (0.26, 0.11, 0.12), -0.3),
        ((-0.1, 0.1, 0.7), (0.08, 0.08, 0.1), 0.0),
    ):
        yield "liver", _ellipsoid(grid, _near(rng, centre, 0.03), _scaled(rng, radii, 0.12),
                                  angle + rng.uniform(-0.15, 0.15), wobble=rng.uniform(0.03, 0.08),
                                  phase=rng.uniform(0, 2 * np.pi))
    yield "stomach", _ellipsoid(grid, _near(rng, (0.3, -0.18, 0.72), 0.04), _scaled(rng, (0.18, 0.14, 0.14), 0.15),
                                rng.uniform(0.3, 0.7), wobble=rng.uniform(0.04, 0.1), phase=rng.uniform(0, 2 * np.pi))


def _abdomen_ct(rng, size: int, slices: int) -> PhantomCase:
    """Multi-organ abdominal CT in HU (int16) with its organ label map (uint8)."""
    affine = _scanner_affine(rng, size, pixel_mm=(0.7, 0.9), slice_mm=(2.0, 2.5, 3.0))
    grid = _Grid.of(size, slices)
    codes = _torso(rng, grid, ribs_from=0.6)
    organs = grid.without_ends(max(1, round(0.05 * slices)))
    for name, region in _abdominal_organs(rng, organs):
        _paint(codes, _ORGAN_CODE[name], region, over=(SOFT,))
    image = _hounsfield(rng, codes, _ABDOMEN_HU, noise_hu=rng.uniform(8, 20))
    return PhantomCase((image,), _ORGAN_LABEL[codes], affine)


# ------------------------------------------------------------------------------ brain MR

BRAIN_TISSUES = ("skull", "csf", "grey matter", "white matter", "lesion")
BACKGROUND, SKULL, CSF, GREY, WHITE, LESION = range(6)
# Relative signal per tissue (low, high): T1 has white matter brightest and CSF dark, T2 the reverse.
T1_SIGNAL = {
    BACKGROUND: (0, 0), SKULL: (90, 150), CSF: (200, 280), GREY: (520, 600), WHITE: (780, 860), LESION: (330, 420),
}
T2_SIGNAL = {
    BACKGROUND: (0, 0), SKULL: (70, 120), CSF: (950, 1050), GREY: (650, 740), WHITE: (430, 520), LESION: (820, 930),
}


def _brain_tissues(rng, grid: _Grid) -> np.ndarray:
    """A head as nested shells -- skull, a CSF rim, a folded grey-matter cortex around white matter --
    with lateral ventricles, deep grey nuclei and one lesion. Codes equal the label values."""
    tilt = rng.uniform(-0.12, 0.12)
    radii = _scaled(rng, (0.74, 0.9, 0.56), 0.06)
    x, y, z = grid.local((slice(None), slice(None), slice(None)))
    u = x * np.float32(np.cos(tilt)) + y * np.float32(np.sin(tilt))
    v = y * np.float32(np.cos(tilt)) - x * np.float32(np.sin(tilt))
    radius = np.sqrt((u / radii[0]) ** 2 + (v / radii[1]) ** 2 + ((z - 0.42) / radii[2]) ** 2)
    gyri = int(rng.integers(7, 12))
    folds = 1 + 0.05 * np.sin(gyri * np.arctan2(v, u) + rng.uniform(0, 2 * np.pi)) * np.cos(
        gyri * np.pi * z + rng.uniform(0, 2 * np.pi)
    )
    codes = np.zeros(grid.shape, dtype=np.uint8)
    for code, inside in (
        (SKULL, radius <= 1), (CSF, radius <= 0.93), (GREY, radius <= 0.88), (WHITE, radius * folds <= 0.7)
    ):
        codes[inside] = code
    for side in (-1, 1):
        ventricle = _ellipsoid(grid, _near(rng, (side * 0.1, -0.05, 0.55), 0.02),
                               _scaled(rng, (0.055, 0.26, 0.12), 0.2), side * rng.uniform(0.05, 0.2), wobble=0.1, lobes=2)
        _paint(codes, CSF, ventricle, over=(WHITE, GREY))
        nucleus = _ellipsoid(grid, _near(rng, (side * 0.24, 0.05, 0.45), 0.02), _scaled(rng, (0.08, 0.12, 0.1), 0.2))
        _paint(codes, GREY, nucleus, over=(WHITE,))
    _paint(codes, LESION, _blob_in_brain(rng, grid, codes, (0.06, 0.14)), over=(WHITE, GREY))
    return codes


def _blob_in_brain(rng, grid: _Grid, codes: np.ndarray, radius_range: tuple[float, float]) -> Region | None:
    """A lesion-shaped blob centred on a random parenchyma voxel, never thinner than a few voxels so
    that it survives coarse grids (it always holds the voxel it is centred on)."""
    parenchyma = np.flatnonzero((codes == WHITE) | (codes == GREY))
    i, j, k = np.unravel_index(parenchyma[rng.integers(len(parenchyma))], codes.shape)
    nx, _, nz = codes.shape
    in_plane = max(rng.uniform(*radius_range), 2.5 * 2 / nx)
    along_z = max(rng.uniform(*radius_range), 1.5 / max(nz - 1, 1))
    radii = (in_plane * rng.uniform(0.8, 1.2), in_plane * rng.uniform(0.8, 1.2), along_z)
    return _ellipsoid(grid, (grid.x[i], grid.y[j], grid.z[k]), radii, rng.uniform(0, np.pi),
                      wobble=rng.uniform(0.05, 0.15), lobes=int(rng.integers(2, 5)), phase=rng.uniform(0, 2 * np.pi))


def _mr_image(rng, grid: _Grid, tissues: np.ndarray, signal: dict[int, tuple[float, float]]) -> np.ndarray:
    """Render tissues with one contrast: partial-volume blur, a smooth multiplicative bias field (coil
    sensitivity) and Rician noise (the magnitude of complex Gaussian noise), as float32."""
    table = _lookup(rng, signal)
    image = ndimage.gaussian_filter(table[tissues], sigma=(0.6, 0.6, 0.3))
    x, y, z = grid.local((slice(None), slice(None), slice(None)))
    c = rng.uniform(-0.2, 0.2, size=6).astype(np.float32)
    image *= np.exp(c[0] * x + c[1] * y + c[2] * x * y + c[3] * (x**2 + y**2) + c[4] * (z - 0.5) + c[5] * x * (z - 0.5))
    sigma = np.float32(rng.uniform(0.015, 0.035) * table.max())
    real = image + sigma * rng.standard_normal(image.shape, dtype=np.float32)
    imaginary = sigma * rng.standard_normal(image.shape, dtype=np.float32)
    return np.hypot(real, imaginary).astype(np.float32)


def _brain_affine(rng, size: int) -> np.ndarray:
    return _scanner_affine(rng, size, pixel_mm=(0.9, 1.0), slice_mm=(3.0, 4.0, 5.0))


def _brain_synthesis(rng, size: int, slices: int) -> PhantomCase:
    """T1-like (_0000) and T2-like (_0001) renderings of one tissue map, which is the label file."""
    affine = _brain_affine(rng, size)
    grid = _Grid.of(size, slices)
    tissues = _brain_tissues(rng, grid)
    t1, t2 = _mr_image(rng, grid, tissues, T1_SIGNAL), _mr_image(rng, grid, tissues, T2_SIGNAL)
    return PhantomCase((t1, t2), tissues, affine)


def _brain_inpainting(rng, size: int, slices: int) -> PhantomCase:
    """A T1-like brain with a lesion-shaped region voided to exactly 0 (_0000), the full image
    (_0001) and the voided region as a 0/1 mask (the label file)."""
    affine = _brain_affine(rng, size)
    grid = _Grid.of(size, slices)
    tissues = _brain_tissues(rng, grid)
    full = _mr_image(rng, grid, tissues, T1_SIGNAL)
    mask = np.zeros(grid.shape, dtype=np.uint8)
    _paint(mask, 1, _blob_in_brain(rng, grid, tissues, (0.08, 0.16)), over=(0,))
    mask &= np.isin(tissues, (CSF, GREY, WHITE, LESION))  # the void stays inside the skull
    voided = np.where(mask == 1, np.float32(0), full)
    return PhantomCase((voided, full), mask, affine)


# ------------------------------------------------------------------------------ chest CT, low dose

LUNG, HEART, VESSEL = 4, 5, 6
_CHEST_HU = TORSO_HU | {LUNG: (-880, -820), HEART: (30, 50), VESSEL: (35, 60)}
# Incident photons per detector bin per view at reduced (quarter-like) dose: soft-tissue noise of
# about 25 HU, as in clinical low-dose scans (measured here at 64 to 256 px with one view per pixel).
PHOTONS_PER_BIN = 5e4


def _chest_codes(rng, grid: _Grid) -> np.ndarray:
    """An axial chest: a trunk ribbed throughout, heart, aorta, two lungs (the heart's side smaller)
    and pulmonary vessels inside them."""
    codes = _torso(rng, grid, ribs_from=0.0)
    _paint(codes, HEART, _ellipsoid(grid, _near(rng, (0.1, -0.15, 0.4), 0.04), _scaled(rng, (0.26, 0.2, 0.35), 0.12),
                                    rng.uniform(-0.6, -0.2), wobble=0.05), over=(SOFT,))
    _paint(codes, VESSEL, _vessel(grid, _near(rng, (0.05, 0.2), 0.02), rng.uniform(0.04, 0.055), 0.02,
                                  rng.uniform(0, 2 * np.pi)), over=(SOFT,))
    lungs = [
        (_near(rng, (side * 0.38, 0.0, 0.55), 0.03), _scaled(rng, (0.27 - 0.02 * side, 0.42, 0.65), 0.08))
        for side in (-1, 1)
    ]
    for centre, radii in lungs:
        _paint(codes, LUNG, _ellipsoid(grid, centre, radii, wobble=0.04, phase=rng.uniform(0, 2 * np.pi)), over=(SOFT,))
    for _ in range(12 * len(lungs)):
        centre, radii = lungs[rng.integers(len(lungs))]
        offset = rng.uniform(-0.7, 0.7, size=3) * radii
        calibre = 0.015 * rng.uniform(0.7, 1.5)
        vessel = _ellipsoid(grid, tuple(np.add(centre, offset)), (calibre, calibre, rng.uniform(0.05, 0.15)))
        _paint(codes, VESSEL, vessel, over=(LUNG,))
    return codes


def _low_dose(rng, full_hu: np.ndarray, pixel_mm: float, photons: float) -> np.ndarray:
    """The low-dose scan of `full_hu`, simulated in the projection domain, slice by slice.

    Physics: HU -> linear attenuation mu = mu_water (1 + HU / 1000). The parallel-beam line
    integrals p = radon(mu) (times the pixel size, in mm) give each detector bin the expected count
    I0 e^{-p}; the measured count is Poisson. The scanner takes -log(N / I0) (counts of 0 are clamped
    to 1, as scanners do against photon starvation) and reconstructs with filtered back-projection
    (iradon, ramp filter). FBP is linear, so we reconstruct only the noise sinogram
    -log(N / I0) - p and add it to the clean slice: this is the standard noise-insertion method for
    low-dose simulation, and it leaves the pair differing by dose noise alone rather than also by
    FBP discretisation error. The noise is streaky and correlated like real low-dose noise, and
    stronger where rays cross more tissue. `photons` is I0, per detector bin and view.
    Projections run on threads (skimage releases the GIL); the Poisson draws happen in one call on
    this thread, so results do not depend on scheduling.
    """
    from skimage.transform import iradon, radon

    views = np.linspace(0.0, 180.0, full_hu.shape[0], endpoint=False)
    mu = MU_WATER * np.clip(1 + full_hu.astype(np.float64) / 1000, 0, None)
    with ThreadPoolExecutor(max_workers=_cpu_count()) as pool:
        sinograms = np.stack(list(pool.map(lambda k: radon(mu[:, :, k], views, circle=True), range(mu.shape[2]))))
        sinograms *= pixel_mm
        counts = np.maximum(rng.poisson(photons * np.exp(-sinograms)), 1)
        noise = -np.log(counts / photons) - sinograms
        noise_mu = list(pool.map(lambda sinogram: iradon(sinogram, views, filter_name="ramp", circle=True), noise))
    noise_hu = np.stack(noise_mu, axis=-1) * (1000 / (MU_WATER * pixel_mm))
    return _int16_hu(full_hu + noise_hu)


def _cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _chest_low_dose(rng, size: int, slices: int) -> PhantomCase:
    """A low-dose chest CT (_0000) and its clean full-dose phantom (_0001), both int16 HU."""
    affine = _scanner_affine(rng, size, pixel_mm=(0.65, 0.85), slice_mm=(2.0, 3.0))
    full = _hounsfield(rng, _chest_codes(rng, _Grid.of(size, slices)), _CHEST_HU, noise_hu=0)
    photons = PHOTONS_PER_BIN * rng.uniform(0.7, 1.4)
    return PhantomCase((_low_dose(rng, full, abs(affine[0, 0]), photons), full), None, affine)


# ------------------------------------------------------------------------------ chest X-ray


def _chord(squared_radius: np.ndarray, half_depth: float) -> np.ndarray:
    """Length of the front-to-back ray through an ellipsoid at a point of normalised squared radius."""
    return 2 * half_depth * np.sqrt(np.clip(1 - squared_radius, 0, None))


def _chest_radiograph(rng, size: int, slices: int) -> PhantomCase:
    """A PA chest radiograph as the line integral of attenuation through analytic solids: a torso
    with shoulders and neck, two lungs cut by diaphragm domes and overlapped by the heart, spine,
    ribs and clavicles; then Poisson quantum noise and detector blur. Displayed like a radiograph
    (attenuating = bright) as 16-bit grey; the label is the visible lung field (0/1).
    The patient's right is on the image's left, as radiographs are read; `slices` is unused."""
    across = ((np.arange(size) + 0.5) / size * 2 - 1).astype(np.float32)
    u, v = across[None, :], -across[:, None]  # columns left -> right, rows top (cranial) -> bottom
    half_depth, width = rng.uniform(0.5, 0.6), rng.uniform(0.8, 0.9)
    shoulders = width * np.sqrt(np.clip(1 - (np.clip(v - 0.55, 0, None) / 0.5) ** 2, 0, None))
    body = _chord((u / np.maximum(shoulders, 0.2)) ** 2, half_depth)
    lungs = np.zeros((size, size), dtype=np.float32)
    for side in (-1, 1):  # image left = patient's right lung, the larger one
        uc, vc = side * rng.uniform(0.36, 0.44), rng.uniform(0.0, 0.1)
        rx, rv = (0.3 if side < 0 else 0.27) * rng.uniform(0.9, 1.1), rng.uniform(0.55, 0.65)
        lateral = ((u - uc) / rx) ** 2
        diaphragm = vc - rv * rng.uniform(0.55, 0.7) + rng.uniform(0.1, 0.2) * (1 - lateral)
        lungs += _chord(lateral + ((v - vc) / rv) ** 2, 0.75 * half_depth) * (v > diaphragm)
    heart_centre, heart_radii = _near(rng, (0.12, -0.3), 0.04), _scaled(rng, (0.3, 0.25), 0.1)
    heart_radius = ((u - heart_centre[0]) / heart_radii[0]) ** 2 + ((v - heart_centre[1]) / heart_radii[1]) ** 2
    heart = _chord(heart_radius, 0.4 * half_depth)
    lungs = np.clip(lungs - heart, 0, None)
    bone = _chord((u / 0.07) ** 2, 0.12) * (v < 0.8)
    rib_phase = (rng.uniform(0.55, 0.65) - v - rng.uniform(0.1, 0.3) * u**2) / rng.uniform(0.1, 0.13)
    in_chest_wall = (np.abs(u) > 0.1) & (np.abs(u) < 0.95 * shoulders)
    bone += 0.05 * ((rib_phase % 1 < 0.35) & (rib_phase >= 0) & (rib_phase < 10) & in_chest_wall)
    for side in (-1, 1):
        bone += 0.08 * (_segment_distance(u, v, (side * 0.1, 0.6), (side * 0.55, 0.72)) < 0.03)
    mm_per_unit = rng.uniform(170, 210)
    line_integral = MU_WATER * mm_per_unit * np.clip(body - 0.85 * lungs + 0.8 * bone, 0, None)
    photons = rng.uniform(2e4, 5e4)
    counts = np.maximum(rng.poisson(photons * np.exp(-line_integral)), 1)
    detected = ndimage.gaussian_filter(-np.log(counts / photons), sigma=0.7)
    image = np.clip(detected / (1.05 * detected.max()), 0, 1)
    return PhantomCase((np.round(image * 65535).astype(np.uint16),), (lungs > 0.1 * half_depth).astype(np.uint8), None)


def _segment_distance(u: np.ndarray, v: np.ndarray, start, end) -> np.ndarray:
    """Distance from each pixel to the segment start-end (for bar-like bones such as clavicles)."""
    (u0, v0), (u1, v1) = start, end
    du, dv = u1 - u0, v1 - v0
    t = np.clip(((u - u0) * du + (v - v0) * dv) / (du * du + dv * dv), 0, 1)
    return np.hypot(u - u0 - t * du, v - v0 - t * dv)


# ------------------------------------------------------------------------------ datasets


@dataclass(frozen=True)
class _Phantom:
    """What a task writes: how a case is made, how it is named and how dataset.json describes it."""

    make: Callable[[np.random.Generator, int, int], PhantomCase]
    prefix: str
    file_ending: str
    title: str
    channel_names: dict[str, str]
    labels: dict[str, int]
    mvg: dict


_BRAIN_LABELS = {"background": 0} | {name: value for value, name in enumerate(BRAIN_TISSUES, start=1)}
_PHANTOMS = {
    "segmentation": _Phantom(
        _abdomen_ct, "phantom", ".nii.gz", "Phantom abdomen CT (multi-organ segmentation)", {"0": "CT"},
        {"background": 0} | {name: value for value, name in enumerate(ABDOMEN_ORGANS, start=1)},
        {"task": "segmentation", "modality": "CT", "region": "Abdomen", "normalisation": "ct"},
    ),
    "synthesis": _Phantom(
        _brain_synthesis, "phantom", ".nii.gz", "Phantom brain MR (T1 -> T2 synthesis)", {"0": "T1", "1": "T2"},
        _BRAIN_LABELS,
        {"task": "synthesis", "modality": "MRI", "region": "Brain", "normalisation": "percentile",
         "input_channel": 0, "target_channel": 1},
    ),
    "inpainting": _Phantom(
        _brain_inpainting, "phantom", ".nii.gz", "Phantom brain MR (inpainting)", {"0": "T1 voided", "1": "T1"},
        {"background": 0, "voided": 1},
        {"task": "inpainting", "modality": "MRI", "region": "Brain", "normalisation": "percentile",
         "input_channel": 0, "target_channel": 1},
    ),
    "denoising": _Phantom(
        _chest_low_dose, "phantom", ".nii.gz", "Phantom chest CT (low-dose denoising)", {"0": "CT low dose", "1": "CT"},
        {"background": 0},
        {"task": "denoising", "modality": "CT", "region": "Chest", "normalisation": "ct",
         "input_channel": 0, "target_channel": 1},
    ),
    "xray": _Phantom(
        _chest_radiograph, "xray", ".png", "Phantom chest X-ray (lung segmentation)", {"0": "X-ray"},
        {"background": 0, "lungs": 1},
        {"task": "segmentation", "modality": "X-ray", "region": "Chest", "normalisation": "percentile"},
    ),
}


def phantom_case(task: str, index: int = 0, seed: int = 0, size: int = 128, slices: int = 32) -> PhantomCase:
    """Case `index` of the dataset `write_phantoms(task, seed=seed, ...)` writes, as arrays:
    3-D arrays are (x, y, z) as NIfTI stores them, 2-D X-rays (rows, columns)."""
    _check_arguments(task, seed, size, slices)
    _check_integer("index", index, 0)
    return _PHANTOMS[task].make(np.random.default_rng([int(seed), int(index)]), int(size), int(slices))


def write_phantoms(task: str, out: str | Path, cases: int = 8, seed: int = 0, size: int = 128, slices: int = 32,
                   progress: Callable[[int], object] | None = None) -> Path:
    """Write `cases` synthetic cases of `task` as an nnU-Net v2 raw dataset at `out`; return `out`.

    `out` must be new, empty, or an earlier phantom dataset (whose imagesTr/ and labelsTr/ are then
    replaced, so a smaller re-run leaves no stale cases). dataset.json is written first and each
    file is renamed into place once complete, so an interrupted run leaves no truncated case file.
    `progress`, when given, is called with the number of cases done after each case. 2-D X-rays
    ignore `slices`. Raises ValueError for an unknown task, bad numbers, or an unusable `out`.
    """
    _check_arguments(task, seed, size, slices)
    _check_integer("cases", cases, 1)
    cases, seed, size, slices = int(cases), int(seed), int(size), int(slices)  # numpy integers -> JSON
    phantom = _PHANTOMS[task]
    out = Path(out)
    _prepare_folder(out)
    (out / "imagesTr").mkdir(parents=True, exist_ok=True)
    description = {
        "channel_names": phantom.channel_names,
        "labels": phantom.labels,
        "numTraining": cases,
        "file_ending": phantom.file_ending,
        "name": phantom.title,
        "description": "Synthetic phantom written by storage.phantoms; not patient data.",
        "mvg": phantom.mvg,
        "phantom": {"task": task, "seed": seed, "size": size, "slices": slices},
    }
    (out / "dataset.json").write_text(json.dumps(description, indent=2) + "\n")
    digits = max(3, len(str(cases - 1)))
    for index in range(cases):
        case = phantom_case(task, index, seed, size, slices)
        name = f"{phantom.prefix}_{index:0{digits}d}"
        for channel, image in enumerate(case.channels):
            _save(image, case.affine, out / "imagesTr" / f"{name}_{channel:04d}{phantom.file_ending}")
        if case.label is not None:
            (out / "labelsTr").mkdir(exist_ok=True)
            _save(case.label, case.affine, out / "labelsTr" / f"{name}{phantom.file_ending}")
        if progress is not None:
            progress(index + 1)
    return out


def phantoms_written(out: str | Path, task: str, cases: int = 8, seed: int = 0, size: int = 128, slices: int = 32) -> bool:
    """Whether `out` already holds every case `write_phantoms` would write with these settings
    (the same generator output), so a re-run can reuse it instead of writing it again."""
    out = Path(out)
    try:
        description = json.loads((out / "dataset.json").read_text())
    except (OSError, ValueError):
        return False
    phantom = _PHANTOMS.get(task)
    settings = {"task": task, "seed": seed, "size": size, "slices": slices}
    if phantom is None or description.get("phantom") != settings or description.get("numTraining") != cases:
        return False
    images = list((out / "imagesTr").glob(f"*{phantom.file_ending}"))
    labels = list((out / "labelsTr").glob(f"*{phantom.file_ending}")) if (out / "labelsTr").is_dir() else []
    return len(images) == cases * len(phantom.channel_names) and len(labels) in (0, cases)


def _check_arguments(task: str, seed: int, size: int, slices: int) -> None:
    if task not in PHANTOM_TASKS:
        raise ValueError(f"unknown phantom task {task!r}; choose one of {', '.join(PHANTOM_TASKS)}")
    _check_integer("seed", seed, 0)
    _check_integer("size", size, MIN_SIZE)
    _check_integer("slices", slices, MIN_SLICES)


def _check_integer(name: str, value, least: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < least:
        raise ValueError(f"{name} must be at least {least}, got {value}")


def _prepare_folder(out: Path) -> None:
    """Refuse to mix phantoms into someone else's files; clear the cases of an earlier phantom run."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} exists and is not a folder")
    if not out.is_dir() or not any(out.iterdir()):
        return
    try:
        earlier = json.loads((out / "dataset.json").read_text())
    except (OSError, ValueError):
        earlier = {}
    if not isinstance(earlier, dict) or "phantom" not in earlier:
        raise ValueError(f"{out} is not empty and holds no phantom dataset; choose a new or empty folder")
    for folder in ("imagesTr", "labelsTr"):
        shutil.rmtree(out / folder, ignore_errors=True)


def _save(array: np.ndarray, affine: np.ndarray | None, path: Path) -> None:
    """Write beside the final name, then rename: the layout planner skips the dot-prefixed partial."""
    partial = path.with_name(f".{path.name}")
    if affine is None:
        from PIL import Image

        Image.fromarray(array).save(partial, format="PNG")
    else:
        import nibabel as nib

        image = nib.Nifti1Image(array, affine)
        image.set_qform(affine, code=1)  # 1 = scanner coordinates
        image.set_sform(affine, code=1)
        image.header.set_xyzt_units("mm", "sec")
        nib.save(image, partial)
    os.replace(partial, path)
