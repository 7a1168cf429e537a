"""The stateful rules config (flink-conf/rules.yaml), loaded and validated before a job is built.

A typo in a limit must stop the job at startup with the file, equipment type, sensor and field
named, not silently disable a rule in production: every model is strict (no "12" for 12, no
unknown keys) and cross-field checks (min < max) run on load. The job renders the validated
config into its SQL (jobs/anomaly_rules.py), so the SQL never sees an unchecked value.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

# Rule names as they appear in an anomaly record's `rules` list (the SQL emits exactly these).
RULE_NAMES = ("threshold_min", "threshold_max", "rate_of_change", "stuck", "zscore", "count_drop")
# Names are rendered into SQL string literals: keep them to identifier-like characters.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"
Name = Annotated[str, Field(pattern=NAME_PATTERN)]
# Each stuck window count keeps that many rows per series in Flink state: bound it.
MAX_STUCK_WINDOWS = 1000

_STRICT = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False, frozen=True)


class RulesConfigError(ValueError):
    """The rules file is missing, not YAML, or breaks the schema; the message says where and how."""


class EwmaConfig(BaseModel):
    """Baseline of the z-score rule (same for every series: it is an argument of EWMA_ZSCORE)."""

    model_config = _STRICT
    alpha: float = Field(gt=0.0, le=1.0)
    warmup: int = Field(ge=1)


class Defaults(BaseModel):
    """Rules applied to every sensor, also to types and sensors the file does not list."""

    model_config = _STRICT
    zscore_max: float = Field(gt=0.0)
    stuck_windows: int = Field(ge=2, le=MAX_STUCK_WINDOWS)


class SampleCountConfig(BaseModel):
    """Sample-count drop (same for every series): windows with far fewer samples than the series' usual.

    A window is short when its ``count`` falls below ``(1 - max_drop)`` times the average count of the
    series' last ``windows`` windows and itself; ``persist_windows`` short windows in a row mean samples are
    going missing (a loose connector, a failing transmitter) before the sensor goes silent altogether. The
    average absorbs a gateway's sampling jitter (4 to 6 samples of ~1 Hz data in a 5-s window); persistence
    keeps a hiccup and the partial last window of a machine that stops from paging.
    """

    model_config = _STRICT
    max_drop: float = Field(0.25, gt=0.0, lt=1.0)
    windows: int = Field(12, ge=1, le=MAX_STUCK_WINDOWS)
    persist_windows: int = Field(3, ge=1, le=MAX_STUCK_WINDOWS)


class SensorRules(BaseModel):
    """Limits of one sensor of one equipment type; every field is optional."""

    model_config = _STRICT
    min: float | None = None
    max: float | None = None
    max_step: float | None = Field(default=None, gt=0.0)
    zscore_max: float | None = Field(default=None, gt=0.0)
    stuck_windows: int | None = Field(default=None, ge=2, le=MAX_STUCK_WINDOWS)

    @model_validator(mode="after")
    def _min_below_max(self) -> SensorRules:
        if self.min is not None and self.max is not None and not self.min < self.max:
            raise ValueError(f"min ({self.min}) must be below max ({self.max})")
        return self


class ResolvedRules(BaseModel):
    """One sensor's effective limits: its own, with the defaults filled in."""

    model_config = ConfigDict(frozen=True)
    equipment_type: str
    sensor: str
    min: float | None
    max: float | None
    max_step: float | None
    zscore_max: float
    stuck_windows: int


class RulesConfig(BaseModel):
    """The whole file."""

    model_config = _STRICT
    ewma: EwmaConfig
    defaults: Defaults
    sample_count: SampleCountConfig = SampleCountConfig()
    equipment_types: dict[Name, dict[Name, SensorRules]] = Field(default_factory=dict)

    def resolved(self) -> list[ResolvedRules]:
        """Every listed (type, sensor) with defaults applied, in file order."""
        out = []
        for etype, sensors in self.equipment_types.items():
            for sensor, rules in sensors.items():
                out.append(
                    ResolvedRules(
                        equipment_type=etype,
                        sensor=sensor,
                        min=rules.min,
                        max=rules.max,
                        max_step=rules.max_step,
                        zscore_max=self.defaults.zscore_max if rules.zscore_max is None else rules.zscore_max,
                        stuck_windows=(
                            self.defaults.stuck_windows if rules.stuck_windows is None else rules.stuck_windows
                        ),
                    )
                )
        return out

    def stuck_window_counts(self) -> list[int]:
        """Distinct N of the stuck rule (each needs its own OVER window in the job)."""
        return sorted({self.defaults.stuck_windows, *(r.stuck_windows for r in self.resolved())})


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice (PyYAML would silently keep the last one)."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[object, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first on line {seen[key]})", key_node.start_mark
            )
        seen[key] = key_node.start_mark.line + 1
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _where(loc: tuple[int | str, ...]) -> str:
    """'equipment type 'pump', sensor 'flow', field 'max_step'' from a pydantic error location."""
    parts = [str(p) for p in loc]
    if parts[:1] == ["equipment_types"]:
        named = []
        if len(parts) > 1:
            named.append(f"equipment type {parts[1]!r}")
        if len(parts) > 2:
            named.append(f"sensor {parts[2]!r}")
        if len(parts) > 3:
            named.append(f"field {parts[3]!r}")
        return ", ".join(named) if named else "equipment_types"
    return f"field {'.'.join(parts)!r}" if parts else "top level"


def _messages(exc: ValidationError) -> list[str]:
    lines = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        # Pydantic marks a bad dict key with a trailing "[key]" location element.
        if loc and loc[-1] == "[key]":
            loc = loc[:-1]
            msg = f"name must match {NAME_PATTERN}"
        else:
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown key (check its spelling)"
        lines.append(f"  {_where(loc)}: {msg}")
    return lines


def parse_rules(data: object, source: str = "<rules>") -> RulesConfig:
    """Validate already-parsed YAML/JSON data; errors name ``source`` and every bad field."""
    if not isinstance(data, dict):
        raise RulesConfigError(
            f"{source}: expected a mapping with ewma, defaults and equipment_types, got {type(data).__name__}"
        )
    try:
        return RulesConfig.model_validate(data)
    except ValidationError as exc:
        lines = _messages(exc)
        raise RulesConfigError(
            f"{source}: invalid rules config ({len(lines)} problem{'s' if len(lines) > 1 else ''}):\n"
            + "\n".join(lines)
            + "\nFix the file (its header documents every field) and start the job again."
        ) from None


def load_rules(path: Path) -> RulesConfig:
    """Read and validate a rules file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise RulesConfigError(
            f"{path}: cannot read the rules config ({exc.strerror}); set VIGIL_FLINK__RULES_PATH "
            "or restore flink-conf/rules.yaml"
        ) from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise RulesConfigError(f"{path}: not valid YAML: {exc}") from None
    return parse_rules(data, str(path))


def sensor_key(equipment_type: str, sensor: str) -> str:
    """The one string the SQL matches a row's limits on."""
    return f"{equipment_type}/{sensor}"


__all__ = [
    "RULE_NAMES",
    "RulesConfig",
    "RulesConfigError",
    "ResolvedRules",
    "load_rules",
    "parse_rules",
    "sensor_key",
]
