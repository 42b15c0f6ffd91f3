"""The report's pictures as PNG files and a self-contained HTML page that opens offline.

`dvc plots show` writes a page that loads its chart library from a CDN, so offline it is blank.
Here the charts are drawn with matplotlib (Agg, no pyplot global state) into byte-reproducible
PNGs, and `page` inlines them as data: URIs next to the report's markdown rendered to HTML.
`external_references` checks that such a page fetches nothing from outside itself.

Inputs are plain dicts, so this module depends on nothing else of the package but its atomic
writes.
"""

from __future__ import annotations

import base64
import html
import io
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.style
from markdown_it import MarkdownIt
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from ..atomic import write_bytes

DPI = 100
# Fixed rc settings on top of matplotlib's defaults: a user's matplotlibrc must not change the
# bytes. No PNG "Software" chunk: it carries matplotlib's version.
STYLE: dict[str, Any] = {
    "font.family": "DejaVu Sans",  # ships with matplotlib: the same glyphs everywhere
    "font.size": 10,
    "axes.titlesize": 11,
    "figure.titlesize": 13,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "savefig.dpi": DPI,
    "figure.dpi": DPI,
}
PNG_METADATA: dict[str, str | None] = {"Software": None}

# Okabe–Ito: tells colors apart for the common kinds of color blindness.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")
CLASS_ORDER = ("low", "mid", "high")  # known device classes first, so colors match across plots
BASELINE_PREFIXES = ("stock", "naive")
BASELINE_NAMES = frozenset({"reference"})
FINAL = "final"


# ---------------------------------------------------------------------------- shared helpers


@contextmanager
def _style() -> Iterator[None]:
    with matplotlib.style.context(["default", STYLE]):
        yield


def class_colors(targets: Iterable[str]) -> dict[str, str]:
    """One color per device class, by a fixed order (not input order) so both plots agree."""
    names = set(targets)
    known = [t for t in CLASS_ORDER if t in names]
    ordered = known + sorted(names - set(known))
    return {t: PALETTE[i % len(PALETTE)] for i, t in enumerate(ordered)}


def is_baseline(variant: str) -> bool:
    """Stock models, naive conversions and the untouched reference: what the pipeline beats."""
    return variant in BASELINE_NAMES or variant.startswith(BASELINE_PREFIXES)


def png_bytes(fig: Figure) -> bytes:
    buf = io.BytesIO()
    with _style():
        FigureCanvasAgg(fig)  # binds the Agg canvas without touching pyplot
        fig.savefig(buf, format="png", dpi=DPI, metadata=PNG_METADATA)
    return buf.getvalue()


def _save(fig: Figure, path: Path) -> None:
    try:
        write_bytes(path, png_bytes(fig))
    finally:
        fig.clear()  # frees artists now; nothing global holds the figure


# ---------------------------------------------------------------------------- Pareto plot


def _plottable(points: list[dict]) -> list[dict]:
    return [p for p in points if p.get("warm_p50_ms") is not None and p.get("accuracy") is not None]


def pareto_front(points: list[dict]) -> list[dict]:
    """Points no other point beats: none has lower-or-equal latency and higher-or-equal accuracy
    with one strictly better. Sorted by latency (then accuracy), ready for a step line."""
    pts = _plottable(points)

    def dominated(p: dict) -> bool:
        return any(
            q["warm_p50_ms"] <= p["warm_p50_ms"]
            and q["accuracy"] >= p["accuracy"]
            and (q["warm_p50_ms"] < p["warm_p50_ms"] or q["accuracy"] > p["accuracy"])
            for q in pts
        )

    front = [p for p in pts if not dominated(p)]
    return sorted(front, key=lambda p: (p["warm_p50_ms"], p["accuracy"]))


def _log_ms_axis(ax: Axes) -> None:
    # Latencies span ~2–20 ms: decades alone would leave one labeled tick; 1-2-3-5 ticks read well.
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 3.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _pos: f"{x:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def _draw_finals(ax: Axes, finals: list[dict], colors: dict[str, str]) -> None:
    # Finals of different classes often sit close together: alternate the labels above-right and
    # below-left in latency order so neighbours' labels do not overlap.
    finals = sorted(finals, key=lambda p: p["warm_p50_ms"])
    for i, p in enumerate(finals):
        x, y, color = p["warm_p50_ms"], 100 * p["accuracy"], colors[p["target"]]
        ax.scatter(x, y, s=170, marker="*", color=color, edgecolors="black", zorder=4)
        right = i % 2 == 0
        ax.annotate(
            f"{p['target']} final",
            (x, y),
            xytext=(7, 5) if right else (-7, -5),
            textcoords="offset points",
            ha="left" if right else "right",
            va="bottom" if right else "top",
            fontsize=9,
            fontweight="bold",
            color=color,
            bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.8},
            zorder=5,
        )


def _draw_panel(ax: Axes, pts: list[dict], colors: dict[str, str], x_end: float) -> None:
    for p in pts:
        x, y = p["warm_p50_ms"], 100 * p["accuracy"]
        color = colors[p["target"]]
        if is_baseline(p["variant"]):
            ax.scatter(x, y, s=45, marker="s", facecolors="none", edgecolors=color, zorder=3)
        elif p["variant"] != FINAL:
            ax.scatter(x, y, s=30, marker="o", color=color, alpha=0.8, zorder=3)
    _draw_finals(ax, [p for p in pts if p["variant"] == FINAL], colors)
    front = pareto_front(pts)
    xs = [p["warm_p50_ms"] for p in front]
    ys = [100 * p["accuracy"] for p in front]
    # Carry the last level on to the slowest point: the best accuracy at any larger budget, and a
    # front of one point would otherwise draw nothing.
    xs.append(max(x_end, xs[-1]))
    ys.append(ys[-1])
    ax.step(
        xs,
        ys,
        where="post",
        color="0.35",
        linestyle="--",
        linewidth=1.2,
        zorder=2,
    )


def _pareto_legend(colors: dict[str, str]) -> list[Any]:
    handles: list[Any] = [Patch(color=c, label=f"class {t}") for t, c in colors.items()]
    handles += [
        Line2D([], [], ls="", marker="*", ms=13, color="0.5", mec="black", label="final"),
        Line2D([], [], ls="", marker="o", ms=6, color="0.5", label="pipeline step"),
        Line2D([], [], ls="", marker="s", ms=7, mfc="none", mec="0.3", label="stock / baseline"),
        Line2D([], [], ls="--", color="0.35", label="Pareto front"),
    ]
    return handles


def pareto_figure(points: list[dict]) -> Figure:
    """Accuracy against warm p50 latency, one panel per evaluation set, shared x axis."""
    pts = _plottable(points)
    if not pts:
        raise ValueError("pareto_png: no points with warm_p50_ms and accuracy")
    sets = list(dict.fromkeys(p["set"] for p in pts))
    colors = class_colors(p["target"] for p in pts)
    x_end = max(p["warm_p50_ms"] for p in pts)  # right end of the shared x axis
    with _style():
        fig = Figure(figsize=(4.6 * len(sets) + 1.9, 4.6), layout="constrained")
        axes = fig.subplots(1, len(sets), sharex=True, squeeze=False)[0]
        for ax, name in zip(axes, sets, strict=True):
            _draw_panel(ax, [p for p in pts if p["set"] == name], colors, x_end)
            _log_ms_axis(ax)
            ax.set_title(f"set: {name}")
            ax.set_xlabel("warm p50 latency (ms, log scale)")
            ax.margins(x=0.12, y=0.12)  # room for the "final" labels
        axes[0].set_ylabel("exact-match accuracy (%)")
        fig.suptitle("Accuracy vs latency per device class")
        fig.legend(handles=_pareto_legend(colors), loc="outside right center", frameon=False)
    return fig


def pareto_png(points: list[dict], path: Path) -> None:
    _save(pareto_figure(points), path)


# ---------------------------------------------------------------------------- size bars


def _step_label(row: dict) -> str:
    # report.size_rows writes "low/final"; the group header already names the class.
    return str(row["step"]).removeprefix(f"{row['target']}/")


def _size_layout(rows: list[dict]) -> list[tuple[str, list[dict]]]:
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["target"], []).append(r)
    return list(groups.items())


def sizes_figure(rows: list[dict]) -> Figure:
    """Model size after each build step (and bundle sizes), one bar group per device class."""
    rows = [r for r in rows if r.get("size_mb") is not None]
    if not rows:
        raise ValueError("sizes_png: no rows with size_mb")
    groups = _size_layout(rows)
    colors = class_colors(t for t, _ in groups)
    # Top-down: a bold header row per class, then its steps; a blank row between classes.
    ys, labels, headers, bars = [], [], [], []
    y = 0
    for target, group in groups:
        ys.append(y)
        labels.append(target)
        headers.append(y)
        for r in group:
            y += 1
            ys.append(y)
            labels.append(_step_label(r))
            bars.append((y, r))
        y += 2
    with _style():
        fig = Figure(figsize=(8.0, 1.2 + 0.27 * len(ys)), layout="constrained")
        ax = fig.subplots()
        for by, r in bars:
            bundle = _step_label(r).startswith("bundle")
            drawn = ax.barh(
                by,
                r["size_mb"],
                height=0.7,
                color=colors[r["target"]],
                alpha=0.45 if bundle else 0.9,
                hatch="//" if bundle else None,
            )
            ax.bar_label(drawn, labels=[f"{r['size_mb']:.1f}"], padding=3, fontsize=9)
        ax.set_yticks(ys, labels)
        for tick, ty in zip(ax.get_yticklabels(), ys, strict=True):
            if ty in headers:
                tick.set_fontweight("bold")
        ax.tick_params(axis="y", length=0)
        ax.set_ylim(y - 1.5, -1)  # top-down, in input order
        ax.set_xlim(0, 1.15 * max(r["size_mb"] for r in rows))  # room for the value labels
        ax.grid(axis="y", visible=False)
        ax.set_xlabel("size (MB)")
        ax.set_title("Model size after each build step, and bundle size (hatched)")
    return fig


def sizes_png(rows: list[dict], path: Path) -> None:
    _save(sizes_figure(rows), path)


def write_pictures(points: list[dict], rows: list[dict], out_dir: Path) -> dict[str, Path]:
    paths = {"pareto": out_dir / "pareto.png", "sizes": out_dir / "sizes.png"}
    pareto_png(points, paths["pareto"])
    sizes_png(rows, paths["sizes"])
    return paths


# ---------------------------------------------------------------------------- HTML page

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2rem auto;
       max-width: 72rem; padding: 0 1rem; line-height: 1.45; color: #1f2328; }
h1, h2, h3 { line-height: 1.25; }
h2 { border-bottom: 1px solid #d0d7de; padding-bottom: .3rem; margin-top: 2rem; }
table { border-collapse: collapse; margin: 1rem 0; display: block; overflow-x: auto; }
th, td { border: 1px solid #d0d7de; padding: .3rem .6rem; text-align: left; }
th { background: #f6f8fa; }
tr:nth-child(even) td { background: #fafbfc; }
code { background: #f6f8fa; padding: .1rem .3rem; border-radius: 4px; font-size: 90%; }
figure { margin: 1.5rem 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #d0d7de; }
figcaption { color: #57606a; font-size: 90%; }
"""
# Belt and braces: even if some markdown sneaks a reference in, the browser fetches nothing.
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
MIME = {".png": "image/png", ".svg": "image/svg+xml", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}


def _markdown() -> MarkdownIt:
    # html=False: raw HTML in the markdown is shown as text, never injected into the page.
    return MarkdownIt("commonmark", {"html": False}).enable(["table", "strikethrough"])


def data_uri(path: Path) -> str:
    mime = MIME.get(path.suffix.lower())
    if mime is None:
        raise ValueError(f"page: {path}: unsupported image type {path.suffix!r}")
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _figure_html(name: str, path: Path) -> str:
    alt = html.escape(name)
    return (
        f'<figure><img src="{data_uri(path)}" alt="{alt}"><figcaption>{alt}</figcaption></figure>'
    )


def page(title: str, markdown_sections: list[tuple[str, str]], images: dict[str, Path]) -> str:
    """A complete HTML document, pictures first, then the sections; nothing fetched from outside."""
    md = _markdown()
    body = [f"<h1>{html.escape(title)}</h1>"]
    body += [_figure_html(name, path) for name, path in images.items()]
    for heading, text in markdown_sections:
        body.append(f"<section>\n<h2>{html.escape(heading)}</h2>\n{md.render(text)}</section>")
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )


def write_page(path: Path, html_text: str) -> None:
    write_bytes(path, html_text.encode("utf-8"))


# ---------------------------------------------------------------------------- offline check

# Attributes the browser fetches, per element; <a>/<area> href is navigation and not listed.
FETCHED_ATTRS: dict[str, tuple[str, ...]] = {
    "script": ("src",),
    "link": ("href",),
    "img": ("src", "srcset"),
    "iframe": ("src",),
    "frame": ("src",),
    "source": ("src", "srcset"),
    "video": ("src", "poster"),
    "audio": ("src",),
    "track": ("src",),
    "object": ("data",),
    "embed": ("src",),
    "input": ("src",),
    "image": ("href", "xlink:href"),  # SVG
    "use": ("href", "xlink:href"),  # SVG
    "body": ("background",),
}
CSS_URL = re.compile(r"""url\(\s*(?:"([^"]*)"|'([^']*)'|([^)\s]*))\s*\)""", re.IGNORECASE)
CSS_IMPORT = re.compile(r"""@import\s+(?:"([^"]*)"|'([^']*)')""", re.IGNORECASE)
CSS_COMMENT = re.compile(r"/\*.*?\*/", re.DOTALL)


def _is_local(ref: str) -> bool:
    ref = ref.strip()
    return not ref or ref.startswith("#") or ref.lower().startswith("data:")


def css_references(css: str) -> list[str]:
    """url(...) and @import "..." targets in a stylesheet or a style attribute."""
    css = CSS_COMMENT.sub("", css)
    found = [m.group(m.lastindex or 0) for m in CSS_URL.finditer(css) if m.lastindex]
    found += [m.group(1) or m.group(2) for m in CSS_IMPORT.finditer(css)]
    return found


def srcset_urls(value: str) -> list[str]:
    """Candidate URLs of a srcset ("a.png 1x, b.png 2x"); data: URIs hold commas: no split(",")."""
    urls, expect_url = [], True
    for token in value.split():
        if expect_url:
            urls.append(token.rstrip(","))
            expect_url = token.endswith(",")
        elif "," in token:  # a descriptor ending its candidate, maybe glued to the next URL
            rest = token.split(",", 1)[1]
            if rest:
                urls.append(rest.rstrip(","))
            expect_url = not rest or rest.endswith(",")
    return urls


class _References(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.refs: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._in_style = tag == "style"
        wanted = FETCHED_ATTRS.get(tag, ())
        for name, value in attrs:
            if value is None:
                continue
            if name == "style":
                self.refs += css_references(value)
            elif name in wanted:
                self.refs += srcset_urls(value) if name == "srcset" else [value]

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        self._in_style = False

    def handle_endtag(self, tag: str) -> None:
        if tag == "style":
            self._in_style = False

    def handle_data(self, data: str) -> None:
        if self._in_style:  # html.parser hands <style> content over raw, as CSS
            self.refs += css_references(data)


def external_references(html_text: str) -> list[str]:
    """Everything the page would fetch from outside itself, in order of appearance, once each."""
    parser = _References()
    parser.feed(html_text)
    parser.close()
    return list(dict.fromkeys(r.strip() for r in parser.refs if not _is_local(r)))
