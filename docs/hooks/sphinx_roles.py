"""MkDocs hook: the reST spellings of sparseshare's docstrings, shown as Markdown readers expect.

The docstrings are prose written for Sphinx-style readers: ``:class:`~sparseshare.config.ModelConfig```,
``:func:`run_training```, and literal blocks introduced by ``::``. mkdocstrings renders them as Markdown, which
leaves the role visible (``:class:`` before the code). This hook, run on the API pages' HTML, drops the role; a
fully qualified ``sparseshare.`` name becomes an optional cross-reference (a link when that object is documented on
some page, plain code otherwise, never a warning), and ``~`` keeps the last component as the title, as in Sphinx.
A paragraph's trailing ``::`` before a code block becomes ``:``. The docstrings themselves are unchanged.
"""
from __future__ import annotations

import re

ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|attr|data|obj|exc|const):<code>(~?)([^<]+)</code>")
LITERAL_BLOCK = re.compile(r"::(</p>\s*<div class=\"(?:language-\w+ )?highlight\"|</p>\s*<pre)")


def _role(match: re.Match) -> str:
    short, name = match.group(1), match.group(2)
    title = name.rsplit(".", 1)[-1] if short else name
    if name.startswith("sparseshare."):
        return f'<autoref identifier="{name}" optional><code>{title}</code></autoref>'
    return f"<code>{title}</code>"


def on_page_content(html, page, config, files):
    if not page.file.src_uri.startswith("api/"):
        return html
    return LITERAL_BLOCK.sub(r":\1", ROLE.sub(_role, html))
