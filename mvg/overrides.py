"""Config overrides checked against the config dataclasses: every section, key and value type.

An override set is `{"objective": {"mask_ratio": [0.5, 0.5]}, ...}`; files and command lines may also
write a key with its section (`"objective.mask_ratio": [0.5, 0.5]`). `check_overrides` turns either
form into sections of values of the field's own type (lists become tuples where the field is a
tuple, integers become floats where it is a float) and refuses, naming the key, a section or key
the config does not have, or a value of the wrong type. It runs before anything starts, so a typo
in the fourth variant of a sweep does not surface in its trial an hour later; what only the
dataclasses know (`model.decoder` must be "paper" or "unet", ...) is then checked by building the
config (`checked_config`).
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from collections.abc import Mapping

from mvg.colouring import SCHEMES
from mvg.config import TASKS, MVGConfig

# fields whose strings (or lists of strings) the dataclasses leave unchecked, but whose values are
# a closed set
CHOICES = {("objective", "colouring"): SCHEMES, ("data", "dihedral_tasks"): TASKS, ("model", "test_time_flips"): TASKS,
           ("model", "test_time_shifts"): TASKS}


class OverrideError(ValueError):
    """A bad override; the message names the key (`objective.mask_ratio`) and what is wrong."""


def sections() -> dict[str, type]:
    """Section name -> its dataclass (`model` -> ModelConfig, ...)."""
    hints = typing.get_type_hints(MVGConfig)
    return {field.name: hints[field.name] for field in dataclasses.fields(MVGConfig) if dataclasses.is_dataclass(hints[field.name])}


def check_overrides(overrides: Mapping[str, object], where: str = "") -> dict[str, dict]:
    """`overrides` as config sections with values of each field's type, or OverrideError naming
    the key. `where` prefixes the message (e.g. "variant 'mim-0.5': ")."""
    if not isinstance(overrides, Mapping):
        raise OverrideError(f"{where}expected a mapping of SECTION.KEY: VALUE, got {type(overrides).__name__}")
    known = sections()
    checked: dict[str, dict] = {}
    for key, value in _dotted(overrides, where):
        section, _, name = key.partition(".")
        if section not in known:
            raise OverrideError(f"{where}{key}: no config section {section!r}{_suggestion(section, known)} (sections: {', '.join(known)})")
        fields = typing.get_type_hints(known[section])
        if not name or name not in fields:
            raise OverrideError(f"{where}{key}: {section} has no setting {name!r}{_suggestion(name, fields)}")
        checked.setdefault(section, {})[name] = _typed(value, fields[name], f"{where}{key}", CHOICES.get((section, name)))
    return checked


def checked_config(base: MVGConfig, overrides: Mapping[str, object], where: str = "") -> MVGConfig:
    """`base` with the checked overrides applied; a combination the config refuses (a unet-only
    option on the paper's decoder, ...) is an OverrideError too."""
    sections_ = check_overrides(overrides, where)
    try:
        return base.with_overrides(**sections_)
    except (TypeError, ValueError) as error:
        raise OverrideError(f"{where}{error}") from None


def merged(*override_sets: Mapping[str, Mapping[str, object]]) -> dict[str, dict]:
    """Checked override sets, later ones winning key by key."""
    result: dict[str, dict] = {}
    for overrides in override_sets:
        for section, values in overrides.items():
            result.setdefault(section, {}).update(values)
    return result


def _dotted(overrides: Mapping[str, object], where: str):
    """(SECTION.KEY, value) pairs from either form."""
    for key, value in overrides.items():
        if not isinstance(key, str):
            raise OverrideError(f"{where}{key!r}: keys are SECTION.KEY strings")
        if "." in key:
            yield key, value
        elif isinstance(value, Mapping):
            for name, inner in value.items():
                yield f"{key}.{name}", inner
        else:
            raise OverrideError(f"{where}{key}: expected SECTION.KEY (e.g. objective.colouring) or a section with a mapping of settings")


def _typed(value: object, annotation: object, key: str, choices: tuple[str, ...] | None):
    """`value` as the field's type, or OverrideError saying what was expected."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)

    def refuse(expected: str) -> typing.NoReturn:
        raise OverrideError(f"{key}: expected {expected}, got {value!r} ({type(value).__name__})")

    if annotation is bool:
        return value if isinstance(value, bool) else refuse("true or false")
    if annotation is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else refuse("an integer")
    if annotation is float:
        return float(value) if _is_number(value) else refuse("a number")
    if annotation is str:
        if not isinstance(value, str):
            refuse("a string" + (f": one of {', '.join(choices)}" if choices else ""))
        if choices and value not in choices:
            refuse(f"one of {', '.join(choices)}")
        return value
    if origin is tuple and args == (str, Ellipsis):
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            refuse("a list of strings" + (f" among {', '.join(choices)}" if choices else ""))
        if choices and not set(value) <= set(choices):
            refuse(f"a list of strings among {', '.join(choices)}")
        return tuple(value)
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args) or not all(_is_number(v) for v in value):
            refuse(f"a list of {len(args)} numbers")
        return tuple(float(v) for v in value)
    if origin is dict:
        if not isinstance(value, Mapping) or not all(isinstance(k, str) and _is_number(v) for k, v in value.items()):
            refuse("a mapping of names to numbers")
        unknown = sorted(set(value) - set(TASKS)) if key.endswith("task_weights") else []
        if unknown:
            refuse(f"task names ({', '.join(TASKS)}) as keys, not {', '.join(unknown)}")
        return {k: float(v) for k, v in value.items()}
    raise OverrideError(f"{key}: a setting of type {annotation} cannot be overridden")


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _suggestion(name: str, candidates) -> str:
    close = difflib.get_close_matches(name, list(candidates), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
