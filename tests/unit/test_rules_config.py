"""The rules config: the shipped file loads and covers the simulator; every kind of mistake is named."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from edge.simulator.equipment import EQUIPMENT_TYPES
from vigil.rules import RulesConfigError, load_rules, parse_rules
from vigil.settings import Settings

VALID = {
    "ewma": {"alpha": 0.05, "warmup": 24},
    "defaults": {"zscore_max": 6.0, "stuck_windows": 12},
    "equipment_types": {
        "pump": {
            "flow": {"min": 0, "max": 140.0, "max_step": 35.0},
            "speed": {"stuck_windows": 4, "zscore_max": 8},
            "bearing_temp": {},
        },
    },
}


def with_change(path: tuple[str, ...], value: object) -> dict:
    data = copy.deepcopy(VALID)
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return data


def error_of(data: object) -> str:
    with pytest.raises(RulesConfigError) as info:
        parse_rules(data, "rules-under-test.yaml")
    return str(info.value)


def test_shipped_config_loads_and_covers_every_simulated_sensor() -> None:
    config = load_rules(Settings().scoring.rules_path)
    for etype in EQUIPMENT_TYPES.values():
        listed = config.equipment_types[etype.name]
        assert set(listed) == set(etype.sensor_names), etype.name
        for spec in etype.sensors:
            rules = listed[spec.name]
            # Healthy signals stay inside the envelope: the static limits must not be tighter.
            assert rules.min <= spec.lo and rules.max >= spec.hi, (etype.name, spec.name)


def test_defaults_fill_in_and_overrides_win() -> None:
    config = parse_rules(VALID, "x")
    resolved = {r.sensor: r for r in config.resolved()}
    assert resolved["flow"].zscore_max == 6.0 and resolved["flow"].stuck_windows == 12
    assert resolved["speed"].zscore_max == 8.0 and resolved["speed"].stuck_windows == 4
    assert resolved["bearing_temp"].min is None and resolved["bearing_temp"].max_step is None
    assert resolved["flow"].min == 0.0  # an int in YAML is a valid number
    assert config.stuck_window_counts() == [4, 12]


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        (
            ("equipment_types", "pump", "flow", "maxx"),
            3.0,
            "equipment type 'pump', sensor 'flow', field 'maxx': unknown key",
        ),
        (
            ("equipment_types", "pump", "flow", "max"),
            "140",
            "equipment type 'pump', sensor 'flow', field 'max': Input should be a valid number",
        ),
        (
            ("equipment_types", "pump", "flow", "max_step"),
            -1.0,
            "equipment type 'pump', sensor 'flow', field 'max_step': Input should be greater than 0",
        ),
        (
            ("equipment_types", "pump", "flow", "min"),
            150.0,
            "equipment type 'pump', sensor 'flow': min (150.0) must be below max (140.0)",
        ),
        (
            ("equipment_types", "pump", "speed", "stuck_windows"),
            2.5,
            "equipment type 'pump', sensor 'speed', field 'stuck_windows': Input should be a valid integer",
        ),
        (
            ("equipment_types", "pump", "speed", "stuck_windows"),
            1,
            "field 'stuck_windows': Input should be greater than or equal to 2",
        ),
        (("equipment_types", "pump", "flow", "max"), float("nan"), "field 'max': Input should be a finite number"),
        (("equipment_types", "pump", "bad sensor"), {}, "equipment type 'pump', sensor 'bad sensor': name must match"),
        (
            ("equipment_types", "pump", "flow"),
            [1, 2],
            "equipment type 'pump', sensor 'flow': Input should be a valid dictionary",
        ),
        (("ewma", "alpha"), 0.0, "field 'ewma.alpha': Input should be greater than 0"),
        (("ewma", "warmup"), True, "field 'ewma.warmup': Input should be a valid integer"),
        (("defaults", "zscore"), 3.0, "field 'defaults.zscore': unknown key"),
        (("colour",), "red", "field 'colour': unknown key"),
    ],
)
def test_invalid_config_names_file_type_sensor_and_field(path, value, expected) -> None:
    message = error_of(with_change(path, value))
    assert message.startswith("rules-under-test.yaml: invalid rules config (1 problem)")
    assert expected in message


def test_missing_section_and_several_problems_are_all_reported() -> None:
    data = copy.deepcopy(VALID)
    del data["defaults"]
    data["ewma"]["alpha"] = 3
    message = error_of(data)
    assert "(2 problems)" in message
    assert "field 'defaults': Field required" in message
    assert "field 'ewma.alpha': Input should be less than or equal to 1" in message


def test_not_a_mapping() -> None:
    assert "expected a mapping with ewma, defaults and equipment_types, got list" in error_of([1])


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(RulesConfigError, match=r"nope\.yaml: cannot read the rules config"):
        load_rules(missing)
    broken = tmp_path / "broken.yaml"
    broken.write_text("ewma: {alpha: 0.1\n")
    with pytest.raises(RulesConfigError, match=r"broken\.yaml: not valid YAML"):
        load_rules(broken)
    duplicated = tmp_path / "dup.yaml"
    duplicated.write_text(yaml.safe_dump(VALID) + "ewma: {alpha: 0.2, warmup: 3}\n")
    with pytest.raises(RulesConfigError, match=r"dup\.yaml: not valid YAML: .*duplicate key 'ewma' \(first on line"):
        load_rules(duplicated)
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text(
        yaml.safe_dump(with_change(("equipment_types", "pump", "flow", "max"), None)).replace("max: null", "max: lots")
    )
    with pytest.raises(RulesConfigError, match=r"(?s)wrong\.yaml: invalid rules config.*sensor 'flow', field 'max'"):
        load_rules(wrong)
