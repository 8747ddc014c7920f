"""The page kit: what every startprof HTML page shares (the report, ``reporters/html.py``, and the
bench report, ``bench/html.py``), as memray's reporters share one ``base.html``.

- One skeleton, ``templates/base.html``: the Content-Security-Policy with a per-page nonce, the
  stylesheet and its palette, plotly.js inlined once, the figures' JSON and the code that draws
  them. A page is a template that extends it and fills ``body`` (and, for its own classes,
  ``style``); :func:`render_page` renders it.
- The house style of a figure (:func:`layout`, :func:`axis`, the palettes) and the figures both
  pages draw: a pod start-time CDF per group (:func:`cdf_trace`) and stacked critical-path
  composition bars (:func:`composition_trace`, :func:`composition_layout`).

Everything that comes from a recording or a bench is hostile until escaped. It reaches a page
by three routes, each with one escape:
- HTML text and attributes: by the template engine. Autoescape is on and every ``{{ }}``
  goes through :func:`_escape_output`, ``html.escape`` (``&quot;``, ``&#x27;``: the
  escapes the pages used before jinja2, so the output did not change); only ``Markup`` passes
  as is;
- plotly strings (titles, tick labels, legend names, hover text): plotly renders them as a
  small HTML dialect (``<b>``, ``<a href>``), so ``<``, ``>`` and ``&`` are escaped as well
  (:func:`ptext`); plotly decodes them and shows the characters;
- the figures' JSON inside ``<script>``: ``<``, ``>``, ``&``, U+2028 and U+2029 become
  ``\\uXXXX`` escapes (:func:`script_json`), so no string can close the script element.
The Content-Security-Policy backs this up: only the page's own scripts run and nothing is
fetched.
"""

from __future__ import annotations

import html
import json
import secrets
from collections.abc import Sequence
from functools import cache
from typing import Any, Final

from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup

from startprof import __version__
from startprof.errors import EnvironmentProblem

MAX_POINTS: Final = 100
"""Up to this many pods, a CDF line marks every pod (and box plots show each as a point)."""

COLOR_OK: Final = "#2b8a3e"
COLOR_CRITICAL: Final = "#1971c2"
COLOR_OFF_PATH: Final = "#adb5bd"
COLOR_FAILED: Final = "#e03131"
STATUS_COLORS: Final = {
    "ok": COLOR_OK,
    "restarted": "#7048e8",
    "failed": "#c92a2a",
    "incomplete": "#e67700",
}
"""Pod statuses, in the figures and as the stylesheet's ``--ok``, ``--failed``, ... colours."""
PALETTE: Final = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f", "#aec7e8",
)  # fmt: skip
"""Groups and phase keys, in order."""
COLOR_OTHER: Final = "#dee2e6"
"""What is left after the phase keys shown one by one."""
FONT: Final = "system-ui, -apple-system, 'Segoe UI', Roboto, 'DejaVu Sans', sans-serif"
MONO: Final = "ui-monospace, 'DejaVu Sans Mono', Menlo, monospace"

_SCRIPT_UNSAFE: Final = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028",
                         "\u2029": "\\u2029"}  # fmt: skip


def ptext(value: object) -> str:
    """Escape a value for plotly's HTML-like strings (titles, labels, hover text). Plotly
    decodes ``&lt; &gt; &amp;`` but shows ``&quot;`` as is; without ``<`` no tag can form."""
    return html.escape(str(value), quote=False)


def script_json(value: object) -> str:
    """JSON that is safe inside a ``<script>`` element: no string in it can end the element."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    for char, escaped in _SCRIPT_UNSAFE.items():
        text = text.replace(char, escaped)
    return text


# --- figures: plain plotly JSON, so tests can read exactly what a page will draw ------------


def layout(title: str, height: int, **extra: Any) -> dict[str, Any]:
    """The house style of a plotly figure's layout; ``extra`` keys replace the defaults."""
    layout: dict[str, Any] = {
        "title": {"text": title, "x": 0, "xanchor": "left", "font": {"size": 15}},
        "height": height,
        "margin": {"l": 60, "r": 30, "t": 50, "b": 50},
        "font": {"family": FONT, "size": 12},
        "paper_bgcolor": "#ffffff",
        "plot_bgcolor": "#ffffff",
        "hoverlabel": {"align": "left"},
        "legend": {"orientation": "h", "y": -0.22, "yanchor": "top", "x": 0},
    }
    layout.update(extra)
    return layout


def axis(title: str, **extra: Any) -> dict[str, Any]:
    return {"title": {"text": title}, "gridcolor": "#e9ecef", "zeroline": False, **extra}


def cdf_trace(
    group: str, color: str, durations_ms: Sequence[float], pods: Sequence[str]
) -> dict[str, Any]:
    """One group's step line of the pod start-time CDF: the share of its pods that started
    within x ms. ``durations_ms`` sorted, ``pods`` the pods' names in the same order."""
    n = len(durations_ms)
    return {
        "type": "scatter",
        "mode": "lines+markers" if n <= MAX_POINTS else "lines",
        "line": {"shape": "hv", "width": 2, "color": color},
        "marker": {"size": 5},
        "name": f"{ptext(group)} ({n} pods)",
        # the first point at 0 draws the step up to the fastest pod
        "x": [durations_ms[0], *durations_ms],
        "y": [0.0, *(round((k + 1) / n, 4) for k in range(n))],
        "text": [ptext(pods[0]), *(ptext(p) for p in pods)],
        "hovertemplate": "%{text}<br>%{x:.1f} ms<br>%{y:.0%} of pods this fast or faster"
        "<extra></extra>",
    }


def cdf_yaxis() -> dict[str, Any]:
    return axis("share of pods", tickformat=".0%", range=[0, 1.05])


def cdf_legend(**extra: Any) -> dict[str, Any]:
    """Bottom right, where a CDF has no line."""
    return {"x": 0.99, "xanchor": "right", "y": 0.02, "yanchor": "bottom", **extra}


def composition_trace(
    key: str, groups: Sequence[str], values: Sequence[float], color: str, statistic: str
) -> dict[str, Any]:
    """One phase key's segments of the stacked composition bars, one bar per group; the hover
    names the group and ``statistic`` (plotly's template, e.g. ``median ... %{x:.2f} ms``)."""
    return {
        "type": "bar",
        "orientation": "h",
        "name": ptext(key),
        "y": list(groups),
        "x": list(values),
        "marker": {"color": color},
        "texttemplate": "%{x:.0f}",
        "textposition": "inside",
        "insidetextanchor": "middle",
        "hovertemplate": f"<b>{ptext(key)}</b><br>%{{y}}<br>{statistic}<extra></extra>",
    }


def composition_layout(
    title: str, height: int, xaxis_title: str, margin: dict[str, int]
) -> dict[str, Any]:
    return layout(
        title,
        height=height,
        barmode="stack",
        bargap=0.35,
        uniformtext={"mode": "hide", "minsize": 10},
        margin=margin,
        xaxis=axis(xaxis_title),
        yaxis={"automargin": True, "autorange": "reversed"},
        legend={"orientation": "v", "x": 1.01, "y": 1, "traceorder": "normal"},
    )


# --- the page -------------------------------------------------------------------------------


def _escape_output(value: object) -> object:
    """Every ``{{ }}`` of a page: escaped with ``html.escape`` unless it is ``Markup``."""
    if hasattr(value, "__html__"):
        return value
    return Markup(html.escape(str(value), quote=True))


@cache
def _environment() -> Environment:
    return Environment(
        loader=PackageLoader("startprof.reporters", "templates"),
        autoescape=True,
        finalize=_escape_output,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


@cache
def plotly_js() -> str:
    """The installed plotly.js, to inline once per page."""
    from plotly.offline import get_plotlyjs

    js: str = get_plotlyjs()
    if "</script" in js.lower():  # would end the inline element early; never seen in a release
        raise EnvironmentProblem(
            "the installed plotly.js cannot be inlined: it contains '</script'",
            fix="install another plotly release",
        )
    return js


def render_page(
    template: str, title: str, figures: Sequence[dict[str, Any]], **context: Any
) -> str:
    """Render ``template`` (which extends ``base.html``) with a fresh nonce, plotly.js and the
    figures; ``context`` is the template's own data, raw: the template escapes it."""
    return (
        _environment()
        .get_template(template)
        .render(
            title=title,
            version=__version__,
            nonce=secrets.token_urlsafe(18),
            status_colors=STATUS_COLORS,
            critical_color=COLOR_CRITICAL,
            plotly_js=Markup(plotly_js()),
            figures=Markup(script_json(list(figures))),
            **context,
        )
    )
