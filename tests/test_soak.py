"""Soak: threads share one cold Recognizer for thousands of predictions; every result equals the
sequential one and resident memory stops growing."""

from __future__ import annotations

import gc
import threading
import time
from pathlib import Path

from test_runtime import make_bundle

from ocr_bundles_runtime import ImageError, Recognizer
from stages.data.clean import CaptchaStyle, sample

THREADS = 6
PER_THREAD_HALF = 2500  # predictions per thread in each half: 15000 per half, ~13 s in all
BUDGET_S = 60.0
STYLE = CaptchaStyle(
    width=64, height=24, font_size=(14, 16), min_length=2, max_length=3, alphabet="abcdef"
)


def rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc/self/status")


def outcome(rec: Recognizer, image: bytes) -> tuple:
    try:
        r = rec.predict(image, return_probs=True)
    except ImageError as e:
        return ("error", e.code)
    return (r.text, r.confidence, r.status, r.model, r.char_probs, r.events)


def test_threads_share_one_recognizer(tmp_path: Path):
    # the median confidence as threshold: about half the images rerun with the fallback
    probe = make_bundle(tmp_path / "probe", threshold=0.0)
    images = [sample(STYLE, 11, i)[1] for i in range(40)]
    confs = sorted(Recognizer.from_bundle(probe).predict(im).confidence for im in images)
    bundle = make_bundle(tmp_path / "soak", threshold=confs[len(confs) // 2])
    images += [images[0][:100], b"", b"not an image"]  # refusals interleave with results
    expected = [outcome(Recognizer.from_bundle(bundle), im) for im in images]
    assert len(set(expected)) > 30, "images should not all give the same result"

    shared = Recognizer.from_bundle(bundle)  # cold: the fallback loads under contention
    barrier = threading.Barrier(THREADS + 1)
    errors: list[str] = []
    deadline = time.monotonic() + BUDGET_S

    def worker(tid: int) -> None:
        try:
            for half in range(2):
                barrier.wait()
                for i in range(PER_THREAD_HALF):
                    k = (tid * 7 + i + half) % len(images)
                    got = outcome(shared, images[k])
                    assert got == expected[k], f"thread {tid} image {k}: {got} != {expected[k]}"
                    assert time.monotonic() < deadline, f"over the {BUDGET_S} s budget"
            barrier.wait()
        except threading.BrokenBarrierError:
            pass  # another thread failed first
        except BaseException as e:  # a mismatch, or any exception from predict
            errors.append(f"thread {tid}: {type(e).__name__}: {e}")
            barrier.abort()

    threads = [threading.Thread(target=worker, args=(t,), daemon=True) for t in range(THREADS)]
    for t in threads:
        t.start()
    marks = []
    t0 = time.monotonic()
    for _ in range(3):  # start, after the first half, after the second half
        try:
            barrier.wait(timeout=BUDGET_S + 30)
        except threading.BrokenBarrierError:
            break
        gc.collect()
        marks.append(rss_kb())
    for t in threads:
        t.join(timeout=30)
    assert not errors, errors[:5]
    assert len(marks) == 3
    total = 2 * THREADS * PER_THREAD_HALF
    growth_mb = (marks[2] - marks[1]) / 1024
    print(
        f"\nsoak: {total} predictions on {THREADS} threads in {time.monotonic() - t0:.1f} s; "
        f"RSS {marks[0] / 1024:.1f} -> {marks[1] / 1024:.1f} -> {marks[2] / 1024:.1f} MB, "
        f"second-half growth {growth_mb:+.2f} MB"
    )
    assert growth_mb < 5.0
    assert not shared.events  # no load-time fallback steps
