import sys
from pathlib import Path

# tests import the tiny-model builders as `tiny`
sys.path.insert(0, str(Path(__file__).parent))


import pytest


@pytest.fixture(scope="session")
def measured(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Two tiny classes through the whole pipeline, the bench and baselines included: the
    records every later-stage test reads, written by the real writers (tests/measured.py)."""
    from measured import measure_project

    return measure_project(tmp_path_factory.mktemp("measured"))
