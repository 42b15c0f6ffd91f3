"""Measuring a build: bench orchestration, worker processes, metrics arithmetic, compute floor."""
