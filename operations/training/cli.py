"""`vigil train` and `vigil models list|promote|rollback` (mounted by operations/cli.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from connectors.clickhouse import ClickHouseUnavailable, apply_schema, make_client
from onnx_models.registry import ModelRegistry, RegistryError, default_root
from operations.training.agents import train_diagnostic, train_diagnostic_from_clickhouse
from operations.training.detectors import TrainingDataError, train
from operations.training.fault_labels import LabelFileError, insert_labels, read_label_file
from operations.training.simulated import SimulatedHistory, train_simulated
from vigil.settings import get_settings

models_app = typer.Typer(no_args_is_help=True, help="Trained models: list versions, promote, roll back.")
labels_app = typer.Typer(no_args_is_help=True, help="Known faults in ClickHouse, for training the diagnostic agent.")
console = Console()


def _registry() -> ModelRegistry:
    return ModelRegistry(default_root(get_settings()))


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def _fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(1)


@models_app.command("list")
def list_models(
    equipment_type: Annotated[str | None, typer.Argument(help="only this equipment type")] = None,
) -> None:
    """Every model version, with its threshold, training rows and test alarm rate; * = live."""
    registry = _registry()
    try:
        versions = registry.list(equipment_type)
    except RegistryError as exc:
        _fail(str(exc))
    if not versions:
        console.print(f"no models in {registry.root}; run `vigil train`")
        return
    table = Table(title=f"models in {registry.root}")
    for column in (
        "type",
        "detector",
        "version",
        "live",
        "created",
        "features",
        "fit rows",
        "threshold",
        "test alarm rate",
        "training range",
    ):
        table.add_column(column)
    for v in versions:
        meta = v.metadata
        rng = meta.get("training_range", {})
        table.add_row(
            v.equipment_type,
            v.detector,
            v.version,
            "*" if v.live else "",
            v.created_at[:19],
            str(len(v.feature_names)),
            str(meta.get("rows", {}).get("fit", "")),
            f"{v.threshold:.4g}",
            f"{meta.get('metrics', {}).get('alarm_rate_test', float('nan')):.2%}",
            f"{rng.get('first_window', '')[:19]} .. {rng.get('last_window', '')[:19]}",
        )
    console.print(table)


@models_app.command("promote")
def promote_model(
    equipment_type: Annotated[str, typer.Argument(help="equipment type, e.g. pump")],
    detector: Annotated[str, typer.Argument(help="detector, e.g. pca_t2q")],
    version: Annotated[str, typer.Argument(help="version, e.g. v0003 or 3")],
) -> None:
    """Make a version live; what a scoring job loads on its next poll."""
    try:
        v = _registry().promote(equipment_type, detector, version)
    except RegistryError as exc:
        _fail(str(exc))
    console.print(f"{equipment_type}/{detector}: {v.version} is live")


@models_app.command("rollback")
def rollback_model(
    equipment_type: Annotated[str, typer.Argument(help="equipment type")],
    detector: Annotated[str, typer.Argument(help="detector")],
) -> None:
    """Make the previously live version live again."""
    try:
        v = _registry().rollback(equipment_type, detector)
    except RegistryError as exc:
        _fail(str(exc))
    console.print(f"{equipment_type}/{detector}: rolled back, {v.version} is live")


def train_command(
    since: Annotated[
        str | None,
        typer.Option(help="start of the history, ISO time (UTC if no zone); default: --hours before --until"),
    ] = None,
    until: Annotated[str | None, typer.Option(help="end of the history (exclusive); default: now")] = None,
    hours: Annotated[
        float | None,
        typer.Option(help="history length when --since is not given (default 24; --simulated: 4)"),
    ] = None,
    simulated: Annotated[
        bool,
        typer.Option(
            "--simulated",
            help="train on --hours of a simulated fleet's history ending now, laid out as settings.simulator "
            "says (what the demo does before its fleet starts), instead of ClickHouse; promotes unless told not",
        ),
    ] = False,
    machines: Annotated[int, typer.Option(help="--simulated: machines in the simulated history")] = 200,
    equipment_type: Annotated[list[str] | None, typer.Option("--type", help="equipment type(s); default: all")] = None,
    detector: Annotated[
        list[str] | None, typer.Option(help="detector(s); default: pca_t2q and isolation_forest")
    ] = None,
    promote: Annotated[
        bool | None,
        typer.Option(help="make the new versions live (the first of a type always is; default: only --simulated)"),
    ] = None,
    quantile: Annotated[
        float | None,
        typer.Option(
            help="threshold = this quantile of scores on held-out normal data (default: the level a healthy "
            "window passes scoring.alarm_rate_per_machine_hour times an hour, from the scores' tail)"
        ),
    ] = None,
    agents: Annotated[
        bool,
        typer.Option(
            "--agents",
            help="train the diagnostic agent's classifier instead, registered as agents/diagnostic (see --source)",
        ),
    ] = False,
    source: Annotated[
        str,
        typer.Option(
            help="--agents: 'simulator' (a labelled simulated fleet) or 'clickhouse' (the episodes "
            "of --since/--until/--hours, labelled with `vigil labels import`ed faults)"
        ),
    ] = "simulator",
    unlabelled: Annotated[
        str,
        typer.Option(
            help="--agents --source clickhouse: an episode without a label is 'no_fault' (labels "
            "complete, e.g. the simulator's) or 'skip' (only some faults are known)"
        ),
    ] = "no_fault",
) -> None:
    """Train a model per equipment type and detector on ClickHouse history; register it as a new version."""
    if agents:
        hours = 24.0 if hours is None else hours
        promote = bool(promote)
        settings = get_settings()
        registry = ModelRegistry.from_settings(settings)
        if source not in ("simulator", "clickhouse"):
            _fail(f"--source must be simulator or clickhouse, not {source!r}")
        if source == "clickhouse":
            end = datetime.fromisoformat(until) if until else datetime.now(UTC)
            start = datetime.fromisoformat(since) if since else end - timedelta(hours=hours)
            try:
                version = train_diagnostic_from_clickhouse(
                    settings,
                    registry,
                    int(_utc(start).timestamp() * 1000),
                    int(_utc(end).timestamp() * 1000),
                    promote=promote,
                    unlabelled=unlabelled,
                    console=console,
                )
            except (ValueError, ClickHouseUnavailable, RegistryError) as exc:
                _fail(str(exc))
        else:
            version = train_diagnostic(settings, registry, promote=promote, console=console)
        metrics = version.metadata["metrics"]
        console.print(
            f"agents/diagnostic {version.version}{' (live)' if version.live else ''}: "
            f"{metrics['episodes']} episodes, out-of-bag accuracy {metrics['oob_accuracy']:.3f}"
        )
        return

    settings = get_settings()
    if simulated:
        if since or until or equipment_type or detector or quantile is not None:
            _fail(
                "--simulated trains every job detector of every type on history ending now: drop --since, "
                "--until, --type, --detector and --quantile"
            )
        try:
            history = SimulatedHistory.for_settings(settings, machines, 4.0 if hours is None else hours)
            versions = train_simulated(
                settings, ModelRegistry.from_settings(settings), history, promote=promote is not False, console=console
            )
        except (TrainingDataError, RegistryError, ValueError) as exc:
            _fail(str(exc))
    else:
        end = datetime.fromisoformat(until) if until else datetime.now(UTC)
        start = datetime.fromisoformat(since) if since else end - timedelta(hours=24.0 if hours is None else hours)
        kwargs = {"detectors": tuple(detector)} if detector else {}
        try:
            versions = train(
                settings,
                start,
                end,
                equipment_type or None,
                promote=bool(promote),
                quantile=quantile,
                console=console,
                **kwargs,
            )
        except (TrainingDataError, RegistryError, ClickHouseUnavailable, ValueError) as exc:
            _fail(str(exc))
    for v in versions:
        m = v.metadata
        console.print(
            f"{v.equipment_type}/{v.detector} {v.version}{' (live)' if v.live else ''}: "
            f"{m['rows']['fit']} fit rows, threshold {v.threshold:.4g}, "
            f"test alarm rate {m['metrics']['alarm_rate_test']:.2%}"
        )


@labels_app.command("import")
def import_labels(
    path: Annotated[
        Path,
        typer.Argument(
            help="simulator ground truth (.jsonl) or a work-order CSV (equipment_id, "
            "fault_type, start, end[, site, equipment_type, sensors])"
        ),
    ],
) -> None:
    """Load known faults into ClickHouse (importing a file again replaces, never doubles)."""

    settings = get_settings()
    try:
        labels = read_label_file(path)
        client = make_client(settings.clickhouse, "admin")
        apply_schema(client, settings.clickhouse)
        written = insert_labels(client, settings, labels)
    except (LabelFileError, ClickHouseUnavailable) as exc:
        _fail(str(exc))
    counts = labels["diagnosis"].value_counts().to_dict() if written else {}
    console.print(
        f"{written} fault labels from {path} into {settings.clickhouse.database}."
        f"{settings.clickhouse.fault_labels_table}: " + ", ".join(f"{k} {v}" for k, v in counts.items())
    )
