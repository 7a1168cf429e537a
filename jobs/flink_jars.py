"""Flink's Kafka connector jars, fetched from PyPI and verified.

The Kafka connector is not part of apache-flink-libraries and Maven Central is not reachable
here. The PyPI wheel below carries the Apache-built connector (4.0.1-2.0) and kafka-clients
(3.9.1). We download it without installing it (it would drop Flink 2.0 core jars beside 2.3.0),
check its sha256 and extract exactly the two jars we need.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pyflink

from vigil.settings import get_settings

WHEEL_REQUIREMENT = "shigawire-apache-flink-libraries==2.0.0.post1"
WHEEL_SHA256 = "aaa65537d3f0c0ff279185d8243024f0efd95788ba044bf249ba0f40b69289cd"
JARS = ("flink-connector-kafka.jar", "kafka-clients.jar")
UDF_SOURCES = Path(__file__).resolve().parents[1] / "udfs" / "java"
UDF_JAR = "vigil-udfs.jar"


def connector_jars(jars_dir: Path) -> list[Path]:
    """Paths of the connector jars, extracting them first if they are missing."""
    paths = [jars_dir / name for name in JARS]
    if not all(path.is_file() for path in paths):
        install_connector_jars(jars_dir)
    return paths


def job_jars(jars_dir: Path) -> list[Path]:
    """Every jar a Vigil job adds to ``pipeline.jars``: the Kafka connector and our Java UDFs."""
    return [*connector_jars(jars_dir), udf_jar(jars_dir)]


def udf_jar(jars_dir: Path) -> Path:
    """Compile udfs/java (JVM-side aggregate functions) into a jar, again whenever a source changed."""
    target = jars_dir / UDF_JAR
    sources = sorted(UDF_SOURCES.rglob("*.java"))
    if target.is_file() and all(src.stat().st_mtime <= target.stat().st_mtime for src in sources):
        return target

    classpath = str(Path(pyflink.__file__).parent / "lib" / "*")
    jars_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = ["javac", "--release", "17", "-cp", classpath, "-d", tmp, *map(str, sources)]
        try:
            result = subprocess.run(cmd, capture_output=True, text=True)
        except FileNotFoundError as exc:
            raise RuntimeError("javac not found: install a JDK 17 (apt-get install openjdk-17-jdk-headless)") from exc
        if result.returncode != 0:
            raise RuntimeError(f"compiling the Java UDFs failed:\n{result.stderr}")
        partial = target.with_suffix(".tmp")
        with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr("META-INF/MANIFEST.MF", "Manifest-Version: 1.0\nCreated-By: vigil\n")
            for path in sorted(Path(tmp).rglob("*.class")):
                archive.write(path, path.relative_to(tmp).as_posix())
        partial.replace(target)
    return target


def install_connector_jars(jars_dir: Path) -> list[Path]:
    jars_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, WHEEL_REQUIREMENT]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(
                f"could not download {WHEEL_REQUIREMENT} from PyPI (needed for Flink's Kafka connector):\n"
                f"{result.stderr.strip()}\nCheck network access to PyPI, or place {', '.join(JARS)} in {jars_dir}."
            )
        wheel = next(Path(tmp).glob("*.whl"))
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        if digest != WHEEL_SHA256:
            raise RuntimeError(
                f"{wheel.name} has sha256 {digest}, expected {WHEEL_SHA256}: refusing to use it. "
                "The package on PyPI changed; verify the new jars and update WHEEL_SHA256."
            )
        with zipfile.ZipFile(wheel) as archive:
            for name in JARS:
                target = jars_dir / name
                target.write_bytes(archive.read(f"pyflink/lib/{name}"))
    return [jars_dir / name for name in JARS]


def main() -> None:

    for path in job_jars(get_settings().jars_dir):
        print(path)


if __name__ == "__main__":
    main()
