import sys
from pathlib import Path

# tests import the tiny-model builders as `tiny`
sys.path.insert(0, str(Path(__file__).parent))


import pytest

# `make test` runs the suite on every core (pytest-xdist, --dist loadfile: a file's module
# fixtures are built once). Files are handed out in collection order, so the three longest
# (measured on 2 cores: about 5 and 2 minutes of DVC repros, and 2.5 minutes of tests under
# emulated AVX2) go first, and the short files fill in around them instead of waiting behind
# them at the end (with the emulated file in its alphabetical place, a clean clone's pytest
# took 8 min 43 s).
SLOWEST_FIRST = ("test_dvc_pipeline.py", "test_another_recognizer.py", "test_int8_on_both_x86.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return SLOWEST_FIRST.index(name) if name in SLOWEST_FIRST else len(SLOWEST_FIRST)

    items.sort(key=rank)  # stable: every other test keeps its order


@pytest.fixture(scope="session")
def measured(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Two tiny classes through the whole pipeline, the bench and baselines included: the
    records every later-stage test reads, written by the real writers (tests/measured.py)."""
    from measured import measure_project

    return measure_project(tmp_path_factory.mktemp("measured"))
