"""Progress lines and map_ordered, the threaded loop evaluation and the bench use."""

from __future__ import annotations

import io
import threading
import time

import pytest

from stages.progress import Progress, map_ordered


def test_map_ordered_keeps_item_order_and_uses_the_threads():
    seen: set[int] = set()

    def slow_square(x: int) -> int:
        seen.add(threading.get_ident())
        time.sleep(0.002 * (x % 3))  # out-of-order finishing
        return x * x

    bar = Progress("t", 50, stream=io.StringIO())
    assert map_ordered(slow_square, list(range(50)), bar, workers=4) == [x * x for x in range(50)]
    assert bar.done == 50 and len(seen) > 1


def test_map_ordered_raises_the_first_failure():
    def fail_on_seven(x: int) -> int:
        if x == 7:
            raise ValueError("image 7 is broken")
        return x

    with pytest.raises(ValueError, match="image 7"):
        map_ordered(fail_on_seven, list(range(20)), workers=3)


def test_progress_counts_every_step_from_many_threads():
    out = io.StringIO()
    bar = Progress("count", 8000, every_s=0.0, stream=out)
    threads = [threading.Thread(target=lambda: [bar.step() for _ in range(2000)]) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    bar.close()
    assert bar.done == 8000
    assert out.getvalue().splitlines()[-1].startswith("count: 8000/8000 (done in ")
