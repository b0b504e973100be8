"""Rendering of explorer views: HTML text panels, PNG image panels, status line, snapshot figure.

:func:`attention_html` and :func:`findings_html` escape all text; :func:`png_bytes` encodes
an image panel for the app; :func:`plot_snapshots` draws the book's static snapshots
(matplotlib is imported only when it is called).
"""

from __future__ import annotations

import html
import io
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from xrg.data.images import to_uint8
from xrg.explorer.core import PANELS, ExplorerView

if TYPE_CHECKING:
    from xrg.pipelines import SectionAttention

_SHADE = "255, 140, 0"  # orange, like the encoder chapter's attention plots


def attention_html(attention: dict[str, SectionAttention], unknown_words: Iterable[str] = ()) -> str:
    """The report as the encoder weighed it: one row per sentence, a bar of the sentence's
    weight, then its words, each shaded by word weight × sentence weight (the most weighed
    word of the report fully shaded). Words are escaped (:func:`html.escape`); words the
    vocabulary does not know (read as ``<unk>``) are underlined with a dotted line."""
    if not attention:
        return "<p><i>This model's encoder has no attention weights (the flat encoder ablation).</i></p>"
    unknown = set(unknown_words)
    products = [
        w * s
        for section in attention.values()
        for weights, s in zip(section.word_weights, section.sentence_weights)
        for w in weights
    ]
    top = max(products, default=0.0) or 1.0
    parts = ['<div style="font-family: sans-serif; font-size: 13px; line-height: 1.9">']
    for name, section in attention.items():
        parts.append(f'<div style="font-weight: bold; margin-top: 4px">{html.escape(name.upper())}</div>')
        if not section.sentences:
            parts.append('<div style="color: #888"><i>(empty)</i></div>')
            continue
        for words, weights, sentence_weight in zip(section.sentences, section.word_weights, section.sentence_weights):
            bar = max(0.0, min(1.0, float(sentence_weight))) * 60
            parts.append(
                '<div style="display: flex; align-items: center; gap: 6px">'
                f'<span title="sentence weight {sentence_weight:.3f}" style="flex: none; width: 60px; height: 10px; '
                f'background: #eee; display: inline-block"><span style="display: block; height: 10px; '
                f'width: {bar:.1f}px; background: rgb({_SHADE})"></span></span>'
                f'<span style="flex: none; width: 34px; font-family: monospace; font-size: 11px">'
                f"{sentence_weight:.2f}</span><span>"
            )
            for word, weight in zip(words, weights):
                alpha = max(0.0, min(1.0, weight * sentence_weight / top))
                style = f"background: rgba({_SHADE}, {alpha:.3f}); padding: 1px 2px; border-radius: 2px"
                title = f"word {weight:.3f} × sentence {sentence_weight:.3f}"
                if word in unknown:
                    style += "; text-decoration: underline dotted"
                    title += "; not in the vocabulary (read as <unk>)"
                parts.append(f'<span title="{html.escape(title)}" style="{style}">{html.escape(word)}</span> ')
            parts.append("</span></div>")
    parts.append("</div>")
    return "".join(parts)


def findings_html(view: ExplorerView) -> str:
    """The labelled findings (present, negated, not drawn) and the sentences the last edit
    changed (before struck through, after underlined), all text escaped."""
    present = ", ".join(html.escape(f.describe()) for f in view.present) or "none (a normal chest)"
    negated = ", ".join(html.escape(f.describe()) for f in view.findings if f.negated) or "none"
    parts = [
        '<div style="font-family: sans-serif; font-size: 13px">',
        f"<div><b>Present:</b> {present}</div>",
        f"<div><b>Negated:</b> {negated}</div>",
    ]
    not_drawn = [reason for reason in view.skipped if reason != "negated"]
    if not_drawn:
        parts.append(f"<div><b>Not drawn:</b> {html.escape(', '.join(sorted(not_drawn)))}</div>")
    if view.unknown_words:
        words = ", ".join(dict.fromkeys(view.unknown_words))
        parts.append(f"<div><b>Words the model does not know:</b> {html.escape(words)}</div>")
    if view.edit is None:
        parts.append('<div style="margin-top: 6px; color: #666"><i>No edit yet: click a button above.</i></div>')
    else:
        parts.append(f'<div style="margin-top: 6px"><b>Edit:</b> {html.escape(view.edit.label)}</div><ul>')
        for before, after in view.edit.changed_sentences:
            old = f'<del style="color: #a33">{html.escape(before)}</del>' if before else "<i>(new)</i>"
            new = f'<ins style="color: #262">{html.escape(after)}</ins>' if after else "<i>(removed)</i>"
            parts.append(f"<li>{old} → {new}</li>")
        parts.append("</ul>")
    for note in view.warnings:
        parts.append(f'<div style="color: #a60">note: {html.escape(note)}</div>')
    parts.append("</div>")
    return "".join(parts)


def png_bytes(image: np.ndarray | torch.Tensor) -> bytes:
    """An 8-bit greyscale PNG of a float image in [0, 1] (``(H, W)`` or ``(1, H, W)``)."""
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[0] == 1:
        image = image[0]
    buffer = io.BytesIO()
    Image.fromarray(to_uint8(image), mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def status_text(view: ExplorerView, response_s: float | None = None) -> str:
    """One line: what was done and how long it took (``response_s``: the app's whole response,
    display included; else the explorer's time)."""
    t = view.timing
    action = f"applied {view.edit.label}" if view.edit is not None else "generated"
    seconds = view.seconds if response_s is None else response_s
    steps = f"XRayGAN {t['xraygan']:.2f} s, phantom {t['phantom']:.2f} s"
    return (
        f"{action} in {seconds:.2f} s ({steps}) at {view.image_size}² · "
        f"{len(view.present)} present finding(s) · phantom patient {view.patient_seed}"
    )


def plot_snapshots(rows: Sequence[tuple[str, str, ExplorerView]], title: str):
    """A figure with one row per snapshot: XRayGAN's pair, then the phantom's, and the edit's sentences."""
    import textwrap

    import matplotlib.pyplot as plt

    height = 2.75 * len(rows) + 0.6
    fig, axes = plt.subplots(len(rows), 4, figsize=(10, height), squeeze=False,
                             gridspec_kw=dict(hspace=0.32, wspace=0.04))  # fmt: skip
    fig.subplots_adjust(left=0.07, right=0.99, top=1 - 0.55 / height, bottom=0.3 / height)
    for r, (name, change, view) in enumerate(rows):
        for c, (key, _) in enumerate(PANELS):
            axes[r, c].imshow(view.images()[key], cmap="gray", vmin=0, vmax=1)
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
        axes[r, 0].set_ylabel(textwrap.fill(name, 22), fontsize=9)
        if change:
            caption = textwrap.fill(textwrap.shorten(change, 270, placeholder=" …"), 140)
            axes[r, 0].text(0, -0.04, caption, transform=axes[r, 0].transAxes, fontsize=7.5, va="top", ha="left",
                            color="#333", clip_on=False)  # fmt: skip
    for c, (_, label) in enumerate(PANELS):
        axes[0, c].set_title(label, fontsize=9)
    fig.suptitle(title, fontsize=10, y=1 - 0.12 / height)
    return fig
