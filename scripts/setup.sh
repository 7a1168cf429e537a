#!/usr/bin/env bash
# Installs everything Vigil needs on a fresh Debian machine. Idempotent: re-running skips what is done.
#   - Debian packages: Prometheus, Pushgateway, Alertmanager (the hot-path servers), Chromium (browser test)
#   - a Python 3.11 virtualenv in .venv with Vigil and its dependencies (Flink, chDB...)
#   - from Maven Central (checksums verified by Maven): the Apache Kafka broker and Flink's Kafka connector
#   - from the Go module proxy (verified by go against the checksum database): Toxiproxy, for `vigil chaos`
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3

say() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

# 1. Debian packages: the hot-path servers, and Chromium for the console's browser test (only when missing).
missing=()
for pkg in prometheus prometheus-pushgateway prometheus-alertmanager chromium; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if ((${#missing[@]})); then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  say "installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
command -v java >/dev/null 2>&1 || { echo "Java 17 is required for Flink and Kafka: apt-get install openjdk-17-jdk-headless" >&2; exit 1; }
command -v mvn >/dev/null 2>&1 || { echo "Maven is required to fetch Kafka and Flink's connector: apt-get install maven" >&2; exit 1; }

# 2. Python environment.
if [ ! -x .venv/bin/python ]; then
  say "creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
stamp=.venv/.vigil-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  say "installing Python dependencies (first run takes a few minutes)"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".[dev]"
  touch "$stamp"
fi

# 3. Java artifacts from Maven Central, each set from its pom in scripts/java/<name>, into .venv/java/<name>.
#    --strict-checksums: a jar whose checksum does not match Maven Central's is refused, not used.
maven_copy() {
  local name=$1; shift
  local pom=scripts/java/$name/pom.xml target=.venv/java/$name
  if [ ! -f "$target/.installed" ] || [ "$pom" -nt "$target/.installed" ]; then
    say "fetching $name from Maven Central"
    rm -rf "$target"
    if ! mvn -q -B -Dstyle.color=never --strict-checksums -f "$pom" dependency:copy-dependencies -DoutputDirectory="$ROOT/$target" "$@"; then
      echo "could not fetch $name from Maven Central (see Maven's output above); check network access to repo.maven.apache.org" >&2
      exit 1
    fi
    touch "$target/.installed"
  fi
}
maven_copy kafka-broker -DincludeScope=runtime
maven_copy flink-connectors -DexcludeTransitive=true
.venv/bin/python -m jobs.flink_jars >/dev/null

# 4. Toxiproxy, the fault proxy of `vigil chaos` (operations/stack/fault_proxy.py), built from its Go module.
TOXIPROXY_VERSION=v2.5.0
if [ "$(cat .venv/bin/toxiproxy-server.version 2>/dev/null)" != "$TOXIPROXY_VERSION" ]; then
  command -v go >/dev/null 2>&1 || { echo "Go is required to build Toxiproxy: apt-get install golang" >&2; exit 1; }
  say "building Toxiproxy $TOXIPROXY_VERSION from the Go module proxy"
  gobin=$(mktemp -d)
  if ! GOBIN="$gobin" GOFLAGS=-mod=mod go install "github.com/Shopify/toxiproxy/v2/cmd/server@$TOXIPROXY_VERSION"; then
    echo "could not build Toxiproxy (see go's output above); check network access to proxy.golang.org" >&2
    exit 1
  fi
  mv "$gobin/server" .venv/bin/toxiproxy-server
  rm -rf "$gobin"
  echo "$TOXIPROXY_VERSION" > .venv/bin/toxiproxy-server.version
fi
say "ready: $ROOT/.venv (vigil $(.venv/bin/vigil --help >/dev/null && echo ok))"
