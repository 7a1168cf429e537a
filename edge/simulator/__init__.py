"""Fleet simulator: realistic, labelled telemetry for many machines (see fleet.Fleet and runner.run_simulation)."""
