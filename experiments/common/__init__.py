"""Harness shared by the experiments: results files, argument checks, timing, the published peer."""
