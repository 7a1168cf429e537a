"""Vigil's detectors: one module each, declared with :func:`detectors.base.register`.

Everything that needs the list of detectors (training, the scoring UDF and its job, evaluation, the sinks and
the alert publisher) asks here. The list is every module of this package, plus modules a package adds through
the ``vigil.detectors`` entry-point group that ``settings.scoring.detector_plugin_allowlist`` names, imported
once on first use.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
from functools import cache
from importlib.metadata import entry_points

from detectors.base import DetectorSpec, declared
from vigil.contracts import RULES_SCORE
from vigil.settings import get_settings

log = logging.getLogger(__name__)
ENTRY_POINT_GROUP = "vigil.detectors"
_NOT_DETECTORS = frozenset({"base", "calibration"})  # shared code, not detectors

__all__ = ["DetectorSpec", "all_detectors", "benchmark_detectors", "get", "job_detectors", "score_names"]


@cache
def all_detectors() -> dict[str, DetectorSpec]:
    """name -> spec of every detector module found now, ordered by (order, name)."""
    modules = {
        f"{__name__}.{m.name}"
        for m in pkgutil.iter_modules(__path__)
        if m.name not in _NOT_DETECTORS and not m.name.startswith("_")
    }
    for name in sorted(modules):
        importlib.import_module(name)
    allowed = set(get_settings().scoring.detector_plugin_allowlist)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name not in allowed:  # not imported: installing a package is not consent to run its code
            log.warning(
                "detector plug-in %r (%s) is not in scoring.detector_plugin_allowlist: not loaded", ep.name, ep.value
            )
            continue
        modules.add(ep.load().__module__)
    # Only what is there now: a module removed since an earlier call no longer counts.
    specs = {name: spec for name, spec in declared().items() if spec.make.__module__ in modules}
    return {name: specs[name] for name in sorted(specs, key=lambda n: (specs[n].order, n))}


def get(name: str) -> DetectorSpec:
    try:
        return all_detectors()[name]
    except KeyError:
        raise KeyError(f"unknown detector {name!r}; declared: {', '.join(all_detectors())}") from None


def job_detectors() -> tuple[str, ...]:
    """Detectors the anomaly-scoring job scores (and ``vigil train`` trains), in verdict order."""
    return tuple(name for name, spec in all_detectors().items() if spec.in_job)


def benchmark_detectors(dataset: str) -> dict[str, DetectorSpec]:
    """Detectors ``vigil evaluate --dataset <dataset>`` scores."""
    if dataset == "sim":
        return {name: spec for name, spec in all_detectors().items() if spec.in_job}
    return {name: spec for name, spec in all_detectors().items() if dataset in spec.benchmarks}


def score_names() -> tuple[str, ...]:
    """Keys a verdict's ``scores`` map can hold: every declared detector, then the rules' own score."""
    return (*all_detectors(), RULES_SCORE)
