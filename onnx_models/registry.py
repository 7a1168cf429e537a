"""A versioned on-disk model registry: what was trained, on what, and which version is live.

Layout under the root (``<data_dir>/models`` by default)::

    <equipment_type>/<detector>/v0001/model.onnx      the exported detector (scored by onnxruntime)
    <equipment_type>/<detector>/v0001/metadata.json   features, training range, data hash, threshold, metrics
    <equipment_type>/<detector>/live.json             {"version": "v0003", "history": ["v0001", "v0003"], ...}

A version directory is written completely under a temporary name and then renamed into place, and
``live.json`` is replaced atomically (write + fsync + ``os.replace``), so a reader (the running job
polling for a newly promoted model) never sees a half-written model or pointer. Versions are
immutable; promote/rollback only move the pointer. ``history`` lists the versions that were live,
oldest first, so rollback returns to the one before.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from onnx_models.features import check_feature_names
from onnx_models.runtime import OnnxModel

if TYPE_CHECKING:
    from vigil.settings import Settings

MODEL_FILE = "model.onnx"
METADATA_FILE = "metadata.json"
POINTER_FILE = "live.json"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_VERSION_RE = re.compile(r"^v(\d{4,})$")
# Metadata every version must carry (register refuses a version without them).
REQUIRED_METADATA = ("feature_names", "threshold", "threshold_method")


class RegistryError(RuntimeError):
    """A registry operation cannot be done (unknown type/detector/version, nothing to roll back to)."""


class FeatureMismatchError(ValueError):
    """A model's feature names do not match the features the caller builds; the caller keeps its model."""


def default_root(settings: Settings) -> Path:
    """Where ``vigil train`` writes models and the job reads them."""
    return settings.models_dir


def version_name(number: int) -> str:
    return f"v{number:04d}"


def _version_number(name: str) -> int:
    match = _VERSION_RE.match(name)
    if not match:
        raise RegistryError(f"{name!r} is not a version name (expected v0001, v0002, ...)")
    return int(match.group(1))


def _check_name(kind: str, value: str) -> str:
    if not _NAME_RE.match(value):
        raise RegistryError(f"{kind} {value!r} is not a valid name (letters, digits, _ . -; at most 64)")
    return value


def _normalise_version(version: str | int) -> str:
    if isinstance(version, int) or str(version).isdigit():
        return version_name(int(version))
    _version_number(str(version))
    return str(version)


def _write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so readers see the old or the new content, never a mix."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class ModelVersion:
    """One registered model version (immutable once written)."""

    equipment_type: str
    detector: str
    version: str
    path: Path
    metadata: dict[str, Any] = field(repr=False)
    live: bool = False

    @property
    def model_path(self) -> Path:
        return self.path / MODEL_FILE

    @property
    def feature_names(self) -> list[str]:
        return list(self.metadata["feature_names"])

    @property
    def threshold(self) -> float:
        return float(self.metadata["threshold"])

    @property
    def created_at(self) -> str:
        return str(self.metadata.get("created_at", ""))


@dataclass(frozen=True)
class LoadedModel:
    """A version ready to score: the onnxruntime model plus what the scorer needs from the metadata."""

    version: ModelVersion
    model: OnnxModel
    feature_names: list[str]
    threshold: float

    def score(self, features) -> dict:
        """All model outputs for a batch (rows x features); ``score`` > ``threshold`` means alarm."""
        return self.model.run(features)


class ModelRegistry:
    """Versioned models per (equipment type, detector) with a movable ``live`` pointer."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    @classmethod
    def from_settings(cls, settings: Settings) -> ModelRegistry:
        return cls(default_root(settings))

    # -- paths ---------------------------------------------------------------------------------
    def _dir(self, equipment_type: str, detector: str) -> Path:
        return self.root / _check_name("equipment type", equipment_type) / _check_name("detector", detector)

    def _versions(self, equipment_type: str, detector: str) -> list[str]:
        base = self._dir(equipment_type, detector)
        if not base.is_dir():
            return []
        names = [p.name for p in base.iterdir() if p.is_dir() and _VERSION_RE.match(p.name)]
        return sorted(names, key=_version_number)

    def _read_pointer(self, equipment_type: str, detector: str) -> dict[str, Any] | None:
        path = self._dir(equipment_type, detector) / POINTER_FILE
        try:
            return orjson.loads(path.read_bytes())
        except FileNotFoundError:
            return None
        except orjson.JSONDecodeError as exc:
            raise RegistryError(f"{path} is not valid JSON ({exc}); fix it or re-run `vigil models promote`") from exc

    def _write_pointer(self, equipment_type: str, detector: str, history: list[str]) -> None:
        pointer = {
            "version": history[-1],
            "history": history,
            "updated_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
        }
        path = self._dir(equipment_type, detector) / POINTER_FILE
        _write_atomic(path, orjson.dumps(pointer, option=orjson.OPT_INDENT_2))

    def _version(self, equipment_type: str, detector: str, version: str, live: str | None) -> ModelVersion:
        path = self._dir(equipment_type, detector) / version
        try:
            metadata = orjson.loads((path / METADATA_FILE).read_bytes())
        except FileNotFoundError as exc:
            known = ", ".join(self._versions(equipment_type, detector)) or "none"
            raise RegistryError(
                f"no model {equipment_type}/{detector} {version} in {self.root} (versions: {known}); "
                "see `vigil models list`"
            ) from exc
        return ModelVersion(equipment_type, detector, version, path, metadata, live=version == live)

    # -- API -----------------------------------------------------------------------------------
    def register(
        self,
        equipment_type: str,
        detector: str,
        model_bytes: bytes,
        metadata: dict[str, Any],
        promote: bool = False,
    ) -> ModelVersion:
        """Store a new version (next number) and return it; promote it if asked or if it is the first.

        ``metadata`` must hold at least :data:`REQUIRED_METADATA`; version, detector, equipment
        type, creation time and the model file's sha256 are added here.
        """
        missing = [k for k in REQUIRED_METADATA if k not in metadata]
        if missing:
            raise ValueError(f"register: metadata lacks {missing}; the scorer needs them to use the model")
        base = self._dir(equipment_type, detector)
        base.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=base))
        try:
            (staging / MODEL_FILE).write_bytes(model_bytes)
            while True:  # another trainer may take the same number: rename fails, take the next one
                existing = self._versions(equipment_type, detector)
                version = version_name(_version_number(existing[-1]) + 1 if existing else 1)
                full = {
                    **metadata,
                    "version": version,
                    "equipment_type": equipment_type,
                    "detector": detector,
                    "created_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
                    "model_sha256": hashlib.sha256(model_bytes).hexdigest(),
                }
                (staging / METADATA_FILE).write_bytes(orjson.dumps(full, option=orjson.OPT_INDENT_2))
                try:
                    os.rename(staging, base / version)  # atomic; fails if the version exists
                    break
                except OSError:
                    if not (base / version).exists():
                        raise
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        first = self._read_pointer(equipment_type, detector) is None
        if promote or first:
            self.promote(equipment_type, detector, version)
        live = self.live_version(equipment_type, detector)
        return self._version(equipment_type, detector, version, live)

    def list(self, equipment_type: str | None = None) -> list[ModelVersion]:
        """Every version (of one equipment type, or all), sorted by type, detector, version."""
        if not self.root.is_dir():
            return []
        if equipment_type is not None:
            types = [_check_name("equipment type", equipment_type)]
        else:
            types = sorted(p.name for p in self.root.iterdir() if p.is_dir() and _NAME_RE.match(p.name))
        out: list[ModelVersion] = []
        for etype in types:
            type_dir = self.root / etype
            if not type_dir.is_dir():
                continue
            for detector in sorted(p.name for p in type_dir.iterdir() if p.is_dir() and _NAME_RE.match(p.name)):
                live = self.live_version(etype, detector)
                out += [self._version(etype, detector, v, live) for v in self._versions(etype, detector)]
        return out

    def live_version(self, equipment_type: str, detector: str) -> str | None:
        """Name of the live version, or None if none was ever promoted."""
        pointer = self._read_pointer(equipment_type, detector)
        return None if pointer is None else str(pointer["version"])

    def live(self, equipment_type: str, detector: str) -> ModelVersion | None:
        """The live version, or None if none was ever promoted."""
        version = self.live_version(equipment_type, detector)
        return None if version is None else self._version(equipment_type, detector, version, version)

    def history(self, equipment_type: str, detector: str) -> list[str]:
        """Versions that were live, oldest first (the last is live now)."""
        pointer = self._read_pointer(equipment_type, detector)
        return [] if pointer is None else list(pointer.get("history", [pointer["version"]]))

    def promote(self, equipment_type: str, detector: str, version: str | int) -> ModelVersion:
        """Make ``version`` live (the running job picks it up on its next poll)."""
        version = _normalise_version(version)
        self._version(equipment_type, detector, version, None)  # exists?
        history = self.history(equipment_type, detector)
        if not history or history[-1] != version:
            self._write_pointer(equipment_type, detector, [*history, version])
        return self._version(equipment_type, detector, version, version)

    def rollback(self, equipment_type: str, detector: str) -> ModelVersion:
        """Make the previously live version live again (drops the current one from the history)."""
        history = self.history(equipment_type, detector)
        if len(history) < 2:
            raise RegistryError(
                f"{equipment_type}/{detector}: nothing to roll back to (live history: {history or 'empty'}); "
                "promote a specific version with `vigil models promote` instead"
            )
        history = history[:-1]
        self._write_pointer(equipment_type, detector, history)
        return self._version(equipment_type, detector, history[-1], history[-1])

    def load(
        self,
        equipment_type: str,
        detector: str,
        expected_features: list[str] | None = None,
        version: str | int | None = None,
        threads: int = 1,
    ) -> LoadedModel:
        """Load the live (or a given) version for scoring, refusing one built on other features.

        Raises :class:`FeatureMismatchError` naming the first differing column when the model's
        features are not ``expected_features`` (the caller keeps scoring with its previous model),
        and :class:`RegistryError` when there is nothing to load or the file was altered.
        """
        if version is None:
            chosen = self.live_version(equipment_type, detector)
            if chosen is None:
                raise RegistryError(
                    f"no live model for {equipment_type}/{detector} in {self.root}; run `vigil train` first"
                )
        else:
            chosen = _normalise_version(version)
        mv = self._version(equipment_type, detector, chosen, self.live_version(equipment_type, detector))
        model_bytes = mv.model_path.read_bytes()
        digest = hashlib.sha256(model_bytes).hexdigest()
        recorded = mv.metadata.get("model_sha256")
        if recorded is None:  # every registered version has one: a file without it was not registered here
            raise RegistryError(
                f"{mv.model_path} has no sha256 in its metadata, so it cannot be verified: it was not registered "
                "by `vigil train`; retrain, or promote another version"
            )
        if recorded != digest:
            raise RegistryError(
                f"{mv.model_path} does not match the sha256 in its metadata (file altered or truncated); "
                "promote another version or retrain"
            )
        what = f"model {equipment_type}/{detector} {chosen}"
        if expected_features is not None:
            try:
                check_feature_names(expected_features, mv.feature_names, what=what)
            except ValueError as exc:
                raise FeatureMismatchError(str(exc)) from None
        model = OnnxModel(model_bytes, threads=threads)
        if model.n_features is not None and model.n_features != len(mv.feature_names):
            raise FeatureMismatchError(
                f"{what}: ONNX input has {model.n_features} columns but metadata lists "
                f"{len(mv.feature_names)} feature names; the version is inconsistent, retrain it"
            )
        return LoadedModel(mv, model, mv.feature_names, mv.threshold)
