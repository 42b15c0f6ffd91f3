"""The report's pictures and offline HTML page on hand-made inputs: valid, reproducible PNGs, the
Pareto front, the page's tables and inlined images, and the check that it fetches nothing."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from stages.report import plots

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def point(target: str, variant: str, set_: str, ms: float | None, acc: float | None) -> dict:
    return {"target": target, "variant": variant, "set": set_, "warm_p50_ms": ms, "accuracy": acc}


POINTS = [
    point(t, v, s, ms * (1.2 if s == "hard" else 1.0), acc - (0.2 if s == "hard" else 0.0))
    for s in ("clean", "hard")
    for t, v, ms, acc in [
        ("low", "stock_beta", 10.4, 0.896),
        ("low", "reference", 10.4, 0.896),
        ("low", "01-fix_output_shape", 10.1, 0.892),
        ("low", "final", 2.7, 0.908),
        ("high", "stock_default", 3.5, 0.845),
        ("high", "naive_int8", 10.9, 0.895),
        ("high", "final", 3.6, 0.902),
    ]
]
ROWS = [
    {"target": t, "step": step, "size_mb": mb}
    for t in ("high", "low")
    for step, mb in [
        ("reference", 54.1),
        ("01-fix_output_shape", 54.1),
        ("final", 5.3),
        ("bundle ships", 51.8),
        ("bundle optional", 15.5),
    ]
]


def png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as img:
        img.load()  # decodes every pixel, not just the header
        return img.size


# ---------------------------------------------------------------------------- Pareto front


def test_pareto_front_keeps_only_undominated_points_sorted_by_latency() -> None:
    pts = [
        point("a", "slow_good", "s", 10.0, 0.95),
        point("a", "fast_bad", "s", 2.0, 0.80),
        point("a", "dominated", "s", 5.0, 0.80),  # fast_bad is faster, same accuracy
        point("a", "middle", "s", 5.0, 0.90),
        point("a", "worse_everywhere", "s", 12.0, 0.70),
    ]
    front = plots.pareto_front(pts)
    assert [p["variant"] for p in front] == ["fast_bad", "middle", "slow_good"]


def test_pareto_front_ties_both_stay_and_none_values_are_skipped() -> None:
    pts = [
        point("a", "x", "s", 3.0, 0.9),
        point("b", "y", "s", 3.0, 0.9),  # identical: neither is strictly better
        point("a", "no_latency", "s", None, 0.99),
        point("a", "no_accuracy", "s", 1.0, None),
    ]
    assert [p["variant"] for p in plots.pareto_front(pts)] == ["x", "y"]
    assert plots.pareto_front([]) == []


def test_baselines_are_stock_naive_and_reference() -> None:
    assert all(map(plots.is_baseline, ["stock_beta", "stock_default", "naive_int8", "reference"]))
    assert not any(map(plots.is_baseline, ["final", "01-fix_output_shape", "bundle"]))


def test_class_colors_do_not_depend_on_input_order() -> None:
    assert plots.class_colors(["high", "low", "mid"]) == plots.class_colors(["low", "mid", "high"])
    assert len(set(plots.class_colors(["low", "mid", "high", "x"]).values())) == 4


# ---------------------------------------------------------------------------- figures and PNGs


def test_pareto_figure_has_one_panel_per_set_with_shared_log_x() -> None:
    fig = plots.pareto_figure(POINTS)
    assert len(fig.axes) == 2
    left, right = fig.axes
    assert [ax.get_title() for ax in fig.axes] == ["set: clean", "set: hard"]
    assert left.get_shared_x_axes().joined(left, right)
    assert left.get_xscale() == "log"
    assert "ms" in left.get_xlabel() and "%" in left.get_ylabel()
    labels = {t.get_text() for ax in fig.axes for t in ax.texts}
    assert labels == {"low final", "high final"}
    single = plots.pareto_figure([p for p in POINTS if p["set"] == "clean"])
    assert len(single.axes) == 1


def test_pareto_figure_skips_points_without_values() -> None:
    pts = [*POINTS, point("low", "broken", "third", None, 0.5)]
    assert len(plots.pareto_figure(pts).axes) == 2  # "third" has nothing plottable


@pytest.mark.parametrize(
    ("draw", "inputs", "message"),
    [
        (plots.pareto_png, [], "pareto_png: no points with warm_p50_ms and accuracy"),
        (plots.pareto_png, [point("low", "final", "clean", None, 0.9)], "pareto_png: no points"),
        (plots.sizes_png, [], "sizes_png: no rows with size_mb"),
        (plots.sizes_png, [{"target": "low", "step": "final", "size_mb": None}], "sizes_png"),
    ],
)
def test_empty_inputs_raise_a_clear_error(
    draw: Callable[[list[dict], Path], None], inputs: list[dict], message: str, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match=message):
        draw(inputs, tmp_path / "x.png")
    assert not list(tmp_path.iterdir())


def test_write_pictures_writes_valid_pngs_of_the_figure_size(tmp_path: Path) -> None:
    paths = plots.write_pictures(POINTS, ROWS, tmp_path / "out")
    assert paths == {"pareto": tmp_path / "out/pareto.png", "sizes": tmp_path / "out/sizes.png"}
    figures = {"pareto": plots.pareto_figure(POINTS), "sizes": plots.sizes_figure(ROWS)}
    for name, path in paths.items():
        data = path.read_bytes()
        assert data.startswith(PNG_SIGNATURE)
        assert len(data) > 10_000
        w, h = (round(v) for v in figures[name].get_size_inches() * plots.DPI)
        assert png_size(path) == (w, h)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["pareto.png", "sizes.png"]


def test_pngs_are_byte_reproducible(tmp_path: Path) -> None:
    a = plots.write_pictures(POINTS, ROWS, tmp_path / "a")
    b = plots.write_pictures(POINTS, ROWS, tmp_path / "b")
    for name in ("pareto", "sizes"):
        assert a[name].read_bytes() == b[name].read_bytes()
    assert b"matplotlib" not in a["pareto"].read_bytes()  # no Software chunk with a version


def test_sizes_figure_groups_per_class_in_input_order_with_values() -> None:
    ax = plots.sizes_figure([*ROWS, {"target": "low", "step": "low/extra", "size_mb": 1.0}]).axes[0]
    ticks = [t.get_text() for t in ax.get_yticklabels()]
    steps = [r["step"] for r in ROWS[:5]]
    assert ticks == ["high", *steps, "low", *steps, "extra"]  # "low/" prefix dropped
    values = [t.get_text() for t in ax.texts]
    assert values[:5] == ["54.1", "54.1", "5.3", "51.8", "15.5"]


# ---------------------------------------------------------------------------- the HTML page

MARKDOWN = """Intro with **bold**, `code` and a [link](reports/low.md).

- one
- two

| class | accuracy % |
|---|---|
| low | 90.8 |
| <b>high</b> | 90.2 |
"""


def test_page_renders_tables_and_inlines_images(tmp_path: Path) -> None:
    images = plots.write_pictures(POINTS, ROWS, tmp_path)
    html = plots.page("Report <v1> & co", [("Summary", MARKDOWN), ("Notes", "text")], images)
    assert html.startswith("<!DOCTYPE html>") and html.rstrip().endswith("</html>")
    assert html.count("<table>") == 1 and "<td>90.8</td>" in html
    assert html.count('src="data:image/png;base64,') == 2
    assert "<strong>bold</strong>" in html and "<code>code</code>" in html
    assert "<li>one</li>" in html and '<a href="reports/low.md">link</a>' in html
    assert "<title>Report &lt;v1&gt; &amp; co</title>" in html
    assert "<b>high</b>" not in html  # raw HTML in markdown is escaped, not injected
    assert "<h2>Summary</h2>" in html and "<h2>Notes</h2>" in html
    assert plots.external_references(html) == []


def test_page_rejects_unknown_image_types(tmp_path: Path) -> None:
    (tmp_path / "x.gifv").write_bytes(b"")
    with pytest.raises(ValueError, match="unsupported image type"):
        plots.page("t", [], {"x": tmp_path / "x.gifv"})


# ---------------------------------------------------------------------------- offline check


@pytest.mark.parametrize(
    ("snippet", "expected"),
    [
        (
            '<script src="https://cdn.example.com/vega.js"></script>',
            "https://cdn.example.com/vega.js",
        ),
        ('<link href="x.css" rel="stylesheet">', "x.css"),
        ('<img src="a.png" alt="a">', "a.png"),
        ("<style>@font-face { src: url(http://x/y.woff) }</style>", "http://x/y.woff"),
        ('<style>@import "z.css";</style>', "z.css"),
        ("<style>@import url('w.css');</style>", "w.css"),
        ('<div style="background: url(&quot;bg.png&quot;)"></div>', "bg.png"),
        ('<iframe src="//other.site/frame"></iframe>', "//other.site/frame"),
        ('<video poster="p.jpg"><source src="v.mp4"></video>', "p.jpg"),
        ('<object data="o.svg"></object>', "o.svg"),
        ('<embed src="e.swf"/>', "e.swf"),
        ('<img srcset="data:image/png;base64,AA== 1x, big.png 2x">', "big.png"),
    ],
)
def test_external_references_reports_each_fetch(snippet: str, expected: str) -> None:
    html = f"<!DOCTYPE html><html><head></head><body>{snippet}</body></html>"
    assert expected in plots.external_references(html)


def test_external_references_ignores_inline_data_anchors_and_navigation() -> None:
    html = """<html><head><style>/* url(commented.png) */ a { color: red }
    .x { background: url(data:image/png;base64,AAAA) }</style></head><body>
    <img src="data:image/png;base64,AAAA"><a href="other.md">nav</a><a href="#top">top</a>
    <link rel="stylesheet" href="#inline"><area href="map.html"><p>url(text.png)</p>
    </body></html>"""
    assert plots.external_references(html) == []


def test_srcset_urls_handles_commas_inside_data_uris() -> None:
    value = "data:image/png;base64,AA== 1x, b.png 2x,c.png 3x"
    assert plots.srcset_urls(value) == ["data:image/png;base64,AA==", "b.png", "c.png"]
