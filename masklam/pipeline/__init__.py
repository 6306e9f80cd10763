"""Experiment recipes (masklam/recipes/*.toml) and `masklam run`, which carries one out from collection to report."""
