"""Ablation studies: the paper's Tables 4-7 and Figure 7 as sets of variants, and any recipe change
as a `custom` study read from a file.

A variant is an override set on top of the preset (checked against the config dataclasses,
`mvg.overrides`), plus what no config setting says: the share of each dataset's training cases it
trains on (`data_fraction`, Figure 7) and whether it trains one model per dataset instead of one
for all (`isolated`, Table 5).

The `custom` file (YAML or JSON):

    title: read-out variants             # optional
    variants:
      baseline: {}                       # the preset as it is
      cosine:
        model.readout_cosine: true       # SECTION.KEY: value
      slow-lr:
        optim: {lr: 3.0e-4}              # or SECTION: {KEY: value}
      half-data:
        data_fraction: 0.5               # the study keys: data_fraction, isolated
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from mvg.overrides import OverrideError, check_overrides

STUDY_KEYS = ("data_fraction", "isolated")  # keys of a variant that are not config settings
FILE_KEYS = ("title", "variants")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # a variant names Ray runs and folders


@dataclass(frozen=True)
class Variant:
    name: str
    overrides: dict[str, dict] = field(default_factory=dict)  # config sections, as with_overrides takes them
    data_fraction: float = 1.0  # share of each dataset's training cases (at least one case)
    isolated: bool = False  # one model per dataset, each scored on its own dataset

    def describe(self) -> dict[str, object]:
        """What makes the variant: its overrides as SECTION.KEY -> value and the study keys it sets
        (the params of its MLflow run)."""
        described: dict[str, object] = {f"{s}.{k}": v for s, values in self.overrides.items() for k, v in values.items()}
        if self.data_fraction != 1.0:
            described["data_fraction"] = self.data_fraction
        if self.isolated:
            described["isolated"] = True
        return described


@dataclass(frozen=True)
class Study:
    name: str
    title: str
    variants: tuple[Variant, ...]


# Objective variants (Tables 6-7): MIM masks a fixed share of the target patches on every episode
# of every task; AR paints every target pair by pair; the hybrid is the preset's own mix (paper:
# segmentation AR, the other tasks 90 % MIM). The whole-target masking of MIM episodes stays as the
# preset has it: inference paints a whole query target, which a model never shown one cannot do.
MIM_ONLY = {"mim_fraction": 1.0, "segmentation_mim_fraction": 1.0}
AR_ONLY = {"mim_fraction": 0.0, "segmentation_mim_fraction": 0.0}

STUDIES: dict[str, Study] = {
    "colouring": Study(
        "colouring",
        "Table 4: colouring of segmentation targets",
        tuple(Variant(scheme, {"objective": {"colouring": scheme}}) for scheme in ("binary", "predefined", "random")),
    ),
    "unified": Study(
        "unified",
        "Table 5: isolated (one model per dataset) vs unified training (one model for all)",
        (Variant("isolated", isolated=True), Variant("unified")),
    ),
    "objective": Study(
        "objective",
        "Tables 6-7: masked image modelling at 50 % and 75 % masking vs autoregressive vs hybrid",
        (
            Variant("mim-0.5", {"objective": {**MIM_ONLY, "mask_ratio": (0.5, 0.5)}}),
            Variant("mim-0.75", {"objective": {**MIM_ONLY, "mask_ratio": (0.75, 0.75)}}),
            Variant("ar", {"objective": dict(AR_ONLY)}),
            Variant("hybrid"),
        ),
    ),
    "data-scale": Study(
        "data-scale",
        "Figure 7: share of each dataset's training cases",
        tuple(Variant(f"data-{percent}pct", data_fraction=percent / 100) for percent in (1, 10, 50, 100)),
    ),
}
STUDY_NAMES = (*STUDIES, "custom")


def study_named(name: str, variants_file: str | Path | None = None) -> Study:
    """A built-in study, or `custom` read from `variants_file` (checked: see `load_custom`)."""
    if name == "custom":
        if variants_file is None:
            raise ValueError("--study custom needs a variants file (YAML or JSON: see the README, 'Ablations')")
        return load_custom(variants_file)
    if variants_file is not None:
        raise ValueError(f"a variants file goes with --study custom, not {name}")
    try:
        return STUDIES[name]
    except KeyError:
        raise ValueError(f"no study {name!r}; studies: {', '.join(STUDY_NAMES)}") from None


def load_custom(path: str | Path) -> Study:
    """The study of a variants file; a bad file is refused naming the variant and key."""
    path = Path(path)
    try:
        content = yaml.safe_load(path.read_text())  # JSON is YAML too
    except FileNotFoundError:
        raise FileNotFoundError(f"variants file {path}: no such file") from None
    except yaml.YAMLError as error:
        raise OverrideError(f"variants file {path}: not YAML or JSON: {error}") from None
    expected = f"variants file {path}: expected a mapping with 'variants: {{NAME: {{SECTION.KEY: VALUE}}}}'"
    if not isinstance(content, Mapping):
        raise OverrideError(expected)
    unknown = sorted(map(str, set(content) - set(FILE_KEYS)))
    if unknown:
        raise OverrideError(f"variants file {path}: unknown key {', '.join(map(repr, unknown))} (expected {', '.join(FILE_KEYS)})")
    if "variants" not in content:
        raise OverrideError(expected)
    entries = content["variants"]
    if not isinstance(entries, Mapping) or not entries:
        raise OverrideError(f"variants file {path}: 'variants' must map each variant's name to its overrides")
    variants = tuple(variant_from(str(name), overrides or {}, f"{path}: ") for name, overrides in entries.items())
    return Study("custom", str(content.get("title") or f"custom study {path.stem}"), variants)


def variant_from(name: str, entry: Mapping[str, object], where: str = "") -> Variant:
    """A Variant from a file's entry: config overrides (checked) and the study keys."""
    where = f"{where}variant {name!r}: "
    if not NAME.match(name):
        raise OverrideError(f"{where}a name of letters, digits, '-', '_' and '.' (it names runs and folders)")
    if not isinstance(entry, Mapping):
        raise OverrideError(f"{where}expected a mapping of SECTION.KEY: VALUE, got {type(entry).__name__}")
    settings = {key: value for key, value in entry.items() if key not in STUDY_KEYS}
    fraction = entry.get("data_fraction", 1.0)
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
        raise OverrideError(f"{where}data_fraction: expected a number in (0, 1], got {fraction!r}")
    isolated = entry.get("isolated", False)
    if not isinstance(isolated, bool):
        raise OverrideError(f"{where}isolated: expected true or false, got {isolated!r}")
    return Variant(name, check_overrides(settings, where), float(fraction), isolated)
