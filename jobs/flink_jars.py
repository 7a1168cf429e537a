"""The jars a Vigil job adds to ``pipeline.jars``: Flink's Kafka connector and our Java UDFs.

The connector is not part of apache-flink-libraries: scripts/setup.sh fetches Flink's official
flink-sql-connector-kafka (kafka-clients shaded in) from Maven Central, checksums verified by Maven,
as scripts/java/flink-connectors/pom.xml pins it. The UDFs are compiled here from udfs/java.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import zipfile
from pathlib import Path

import pyflink

from vigil.settings import JAVA_LIBS_DIR, get_settings

CONNECTORS_DIR = JAVA_LIBS_DIR / "flink-connectors"
UDF_SOURCES = Path(__file__).resolve().parents[1] / "udfs" / "java"
UDF_JAR = "vigil-udfs.jar"


def connector_jars() -> list[Path]:
    """The connector jars scripts/setup.sh fetched from Maven Central."""
    paths = sorted(CONNECTORS_DIR.glob("*.jar"))
    if not paths:
        raise FileNotFoundError(
            f"Flink's Kafka connector is missing from {CONNECTORS_DIR}: run `make setup` "
            "(it fetches it from Maven Central as scripts/java/flink-connectors/pom.xml pins it)"
        )
    return paths


def job_jars(jars_dir: Path) -> list[Path]:
    """Every jar a Vigil job adds to ``pipeline.jars``: the Kafka connector and our Java UDFs."""
    return [*connector_jars(), udf_jar(jars_dir)]


def udf_jar(jars_dir: Path) -> Path:
    """Compile udfs/java (JVM-side functions) into a jar, again whenever a source changed."""
    target = jars_dir / UDF_JAR
    sources = sorted(UDF_SOURCES.rglob("*.java"))
    if target.is_file() and all(src.stat().st_mtime <= target.stat().st_mtime for src in sources):
        return target

    # Flink's own jars, and the Kafka connector's (PartitionKeys hashes with its Kafka client).
    classpath = os.pathsep.join([str(Path(pyflink.__file__).parent / "lib" / "*"), *map(str, connector_jars())])
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


def main() -> None:

    for path in job_jars(get_settings().jars_dir):
        print(path)


if __name__ == "__main__":
    main()
