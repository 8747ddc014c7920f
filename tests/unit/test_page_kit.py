"""The page kit (reporters/page.py): one skeleton for every HTML page, escaping by the template
engine with the escapes the pages always used, a fresh nonce per page."""

from __future__ import annotations

import re
from importlib import resources

import pytest
from jinja2 import ChoiceLoader, DictLoader, UndefinedError
from markupsafe import Markup

from startprof.reporters import page as kit

HOSTILE = "<img src=x onerror=alert(1)> \"q\" 'a' &"


@pytest.fixture
def with_page(monkeypatch: pytest.MonkeyPatch) -> None:
    """``t.html``, a page on ``base.html`` that shows one value, beside the real templates."""
    env = kit._environment()
    assert env.loader is not None
    page = '{% extends "base.html" %}{% block body %}<p>{{ value }}</p>\n{% endblock %}'
    monkeypatch.setattr(env, "loader", ChoiceLoader([DictLoader({"t.html": page}), env.loader]))
    monkeypatch.setattr(env, "cache", None)


def test_every_page_extends_the_one_skeleton() -> None:
    templates = resources.files("startprof.reporters").joinpath("templates")
    pages = sorted(t.name for t in templates.iterdir() if t.name != "base.html")
    assert pages == ["bench.html", "report.html"]
    for name in pages:
        assert '{% extends "base.html" %}' in templates.joinpath(name).read_text()


@pytest.mark.usefixtures("with_page")
def test_values_are_escaped_as_html_escape_does_and_markup_passes() -> None:
    text = kit.render_page("t.html", title=HOSTILE, figures=[{"x": "</script>"}], value=HOSTILE)
    escaped = "&lt;img src=x onerror=alert(1)&gt; &quot;q&quot; &#x27;a&#x27; &amp;"
    assert f"<p>{escaped}</p>" in text and f"<title>{escaped}</title>" in text
    assert "<img" not in text.split("<script")[0]
    assert text.count("</script>") == 3  # plotly.js, the figures' JSON, the drawing code
    assert '{"x":"\\u003c/script\\u003e"}' in text
    assert (
        kit.render_page("t.html", title="", figures=[], value=Markup("<b>ok</b>")).count(
            "<p><b>ok</b></p>"
        )
        == 1
    )


@pytest.mark.usefixtures("with_page")
def test_a_fresh_nonce_in_the_policy_and_on_every_script() -> None:
    first, second = (kit.render_page("t.html", title="", figures=[], value=1) for _ in range(2))
    (policy,) = re.findall(r"script-src 'nonce-([^']+)'", first)
    assert re.findall(r'<script nonce="([^"]+)"', first) == [policy] * 3
    assert policy not in second


@pytest.mark.usefixtures("with_page")
def test_a_missing_value_is_an_error_not_an_empty_string() -> None:
    with pytest.raises(UndefinedError):
        kit.render_page("t.html", title="", figures=[])
