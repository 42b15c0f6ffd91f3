"""Measuring: preprocessing candidates, bench orchestration, worker processes, metrics
arithmetic, compute floor, the server bench."""
