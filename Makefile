# The two commands of the README:
#   make demo   set everything up and run the main job end to end (stack, simulator, jobs) with live figures
#   make test   set everything up and run the test suite (what CI runs)
.PHONY: setup demo test bench stack-down proto

MACHINES ?= 1000
DURATION ?=
DEMO_ARGS = --machines $(MACHINES) $(if $(DURATION),--duration $(DURATION),)

setup:
	@bash scripts/setup.sh

demo: setup
	.venv/bin/vigil demo $(DEMO_ARGS)

test: setup
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/lint-imports
	.venv/bin/python -m pytest -ra

bench: setup
	.venv/bin/vigil bench throughput

stack-down:
	.venv/bin/vigil stack down

proto:
	cd edge/proto && ../../.venv/bin/python -m grpc_tools.protoc -I. --python_out=. --grpc_python_out=. --pyi_out=. telemetry.proto
	sed -i 's/^import telemetry_pb2 as telemetry__pb2/from edge.proto import telemetry_pb2 as telemetry__pb2/' edge/proto/telemetry_pb2_grpc.py
