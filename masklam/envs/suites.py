"""Facts about the simulator suites that settings need without loading a simulator (no MuJoCo import)."""

# Each suite's own episode length: collect's --steps 0.
SUITE_STEPS = {"dmc": 1000, "metaworld": 500}
