"""Sweeps: grid files expanded into named points, the runner, and the summary."""
