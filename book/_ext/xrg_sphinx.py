"""Sphinx fixes for the xrg book, loaded from ``_config.yml`` (``sphinx.local_extensions``).

sphinx-thebe 0.3.1 (and sphinx-togglebutton) register their inline scripts twice under
Sphinx 7.4, once with filename ``None`` and once with ``""``, so every page declares
``const THEBE_JS_URL`` twice and the browser reports a SyntaxError (the browser test,
``tests/test_book_site.py``, loads every page and fails on it). The duplicates have the same
body, so each page keeps the first of each.
"""

from __future__ import annotations


def _drop_duplicate_scripts(app, pagename, templatename, context, doctree) -> None:
    scripts = context.get("script_files")
    if not scripts:
        return
    seen = set()
    unique = []
    for script in scripts:
        # An inline script is registered once with filename None and once with "".
        attributes = getattr(script, "attributes", {})
        key = (getattr(script, "filename", script) or "", tuple(sorted(attributes.items())))
        if key in seen:
            continue
        seen.add(key)
        unique.append(script)
    context["script_files"] = unique


def setup(app):
    # After every other handler has added its page scripts.
    app.connect("html-page-context", _drop_duplicate_scripts, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
