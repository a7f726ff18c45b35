"""Rollout gallery: one self-contained HTML page per logged step, for looking at what the policy
writes and how each completion was scored.

`<workdir>/gallery/step_<N>.html` (training rollouts) and `eval_<tag>.html` (held-out
evaluations) show, for a sample of questions, the map thumbnail (inline base64 PNG), the
question and its ground truth, and the completions with their reward components (`overall`, the
reward's total, ranks them); groups whose G rewards are all equal are flagged (zero advantage:
GRPO learns nothing from them). `<workdir>/gallery/index.html` links the pages. Every piece of
text is HTML-escaped: completions are model output, untrusted.

The trainer's pipeline batches carry records without their images: the callers
(`rewardmap_jax.evaluation.gallery`) look the figure up in the data sources and pass it as
`image=`. Call `write_gallery(workdir, step, items)` on process 0.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from rewardmap_jax.mapworld.questions import answer_text
from rewardmap_jax.mapworld.records import Record

GALLERY_SUBDIR = "gallery"
TOTAL_KEY = "overall"  # the reward's total component (`rewardmap_jax.rewards`)
_STEP_RE = re.compile(r"^step_(\d+)\.html$")
_EVAL_RE = re.compile(r"^eval_(.+)\.html$")


@dataclasses.dataclass
class GalleryItem:
    """One question with its G completions.

    `rewards[g]` maps reward component name -> value for completion g (e.g. `overall`,
    `format_ok`, `accuracy`, `detail`, `weight`); `overall` ranks and flags groups when present.
    `answer` is the ground truth as text. `image` is a PIL image, encoded PNG/JPEG bytes, a
    path, an HxWx{1,3,4} uint8 array or None.
    """

    question: str
    completions: Sequence[str]
    rewards: Sequence[Mapping[str, float]]
    image: Any = None
    answer: str = ""
    info: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.completions) != len(self.rewards):
            raise ValueError(
                f"gallery item {self.info.get('uid', self.question[:40])!r}: "
                f"{len(self.completions)} completions but {len(self.rewards)} reward dicts"
            )


def _ground_truth(record: Record) -> str:
    """The reference completion (first plan for planning questions, \\boxed{...} otherwise)."""
    try:
        return answer_text(record)
    except (ValueError, KeyError, IndexError) as e:
        return f"(no reference answer: {e})"


def item_from_record(
    record: Record,
    completions: Sequence[str],
    rewards: Sequence[Mapping[str, float]],
    image: Any = None,
) -> GalleryItem:
    """A `GalleryItem` for `record` (ground truth: the answer, or the reference routes); the
    map is `image` when given, else `record.figure`."""
    return GalleryItem(
        question=record.question,
        completions=list(completions),
        rewards=list(rewards),
        image=record.figure if image is None else image,
        answer=_ground_truth(record),
        info={
            "uid": record.uid,
            "type": record.type,
            "map difficulty": record.difficulty_city,
            "question difficulty": record.difficulty_question,
            "source": record.source,
            "city": record.city,
        },
    )


def _to_pil(image: Any) -> Image.Image:
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, (bytes, bytearray)):
        return Image.open(io.BytesIO(image))
    if isinstance(image, (str, Path)):
        return Image.open(image)
    if isinstance(image, np.ndarray):
        arr = image[..., 0] if image.ndim == 3 and image.shape[-1] == 1 else image
        return Image.fromarray(np.asarray(arr, dtype=np.uint8))
    raise TypeError(f"unsupported image type {type(image).__name__}")


def thumbnail_data_uri(image: Any, max_px: int) -> str:
    """The image, shrunk to fit `max_px` x `max_px`, as a `data:image/png;base64,` URI."""
    img = _to_pil(image).convert("RGB")
    img.thumbnail((max_px, max_px), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if math.isfinite(v) else str(v)
    return str(v)


def _esc(v: Any) -> str:
    return html.escape(_fmt(v), quote=True)


_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;max-width:1400px}
.item{display:flex;gap:1.2em;border-top:1px solid #ccc;padding:1em 0}
.map img{border:1px solid #ddd;max-width:100%}.map{flex:0 0 auto}
.body{flex:1;min-width:0}
.tags span{background:#eef;border-radius:3px;padding:0 .4em;margin-right:.3em}
pre{white-space:pre-wrap;word-break:break-word;margin:0;max-height:14em;overflow:auto;
background:#f7f7f7;padding:.4em}
table{border-collapse:collapse;width:100%;margin-top:.5em}
td,th{border:1px solid #ddd;padding:.25em .4em;vertical-align:top;text-align:left}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr.best td.num.total{background:#dfd}.flag{color:#b00;font-weight:bold}
"""


def _item_html(i: int, item: GalleryItem, thumb_px: int) -> str:
    keys: list[str] = []
    for r in item.rewards:
        keys += [k for k in r if k not in keys]
    keys.sort(key=lambda k: k != TOTAL_KEY)  # stable: `total` first, then first-seen order
    totals = [float(r.get(TOTAL_KEY, math.nan)) for r in item.rewards]
    finite = [t for t in totals if math.isfinite(t)]
    best = max(finite) if finite else None
    flags = []
    if len(finite) > 1 and max(finite) == min(finite):
        flags.append("all rewards equal: zero advantage")
    missing = sum(1 for r in item.rewards if TOTAL_KEY not in r)
    if len(finite) + missing < len(totals):  # a reward that is there but NaN / inf
        flags.append(f"{len(totals) - len(finite) - missing} non-finite {TOTAL_KEY} rewards")
    stats = ""
    if finite:
        stats = f"{TOTAL_KEY}: mean {np.mean(finite):.3g}, std {np.std(finite):.3g}"
    image = (
        f'<img src="{thumbnail_data_uri(item.image, thumb_px)}" alt="map">'
        if item.image is not None
        else "<i>no image</i>"
    )
    tags = "".join(f"<span>{_esc(k)}: {_esc(v)}</span>" for k, v in item.info.items())
    head = "".join(f"<th>{_esc(k)}</th>" for k in keys)
    rows = []
    for g, (text, reward) in enumerate(zip(item.completions, item.rewards, strict=True)):
        cls = ' class="best"' if best is not None and totals[g] == best else ""
        cells = "".join(
            f'<td class="num{" total" if k == TOTAL_KEY else ""}">{_esc(reward.get(k, ""))}</td>'
            for k in keys
        )
        rows.append(f"<tr{cls}><td>{g}</td>{cells}<td><pre>{_esc(text)}</pre></td></tr>")
    flag_html = "".join(f'<div class="flag">{_esc(f)}</div>' for f in flags)
    return (
        f'<div class="item" id="q{i}"><div class="map">{image}</div><div class="body">'
        f'<div class="tags">#{i} {tags}</div>'
        f"<h3>Question</h3><pre>{_esc(item.question)}</pre>"
        f"<h3>Ground truth</h3><pre>{_esc(item.answer)}</pre>"
        f"<div>{_esc(stats)}</div>{flag_html}"
        f"<table><tr><th>g</th>{head}<th>completion</th></tr>{''.join(rows)}</table>"
        "</div></div>"
    )


def _finite_totals(item: GalleryItem) -> list[float]:
    totals = [float(r.get(TOTAL_KEY, math.nan)) for r in item.rewards]
    return [t for t in totals if math.isfinite(t)]


def page_summary(items: Sequence[GalleryItem]) -> str:
    """One line: questions, completions, mean total reward, zero-advantage groups."""
    n_done = sum(len(item.completions) for item in items)
    totals = [t for item in items for t in _finite_totals(item)]
    flat = sum(1 for item in items if len(t := _finite_totals(item)) > 1 and min(t) == max(t))
    parts = [f"{len(items)} question{'s' if len(items) != 1 else ''}", f"{n_done} completions"]
    if totals:
        parts.append(f"mean {TOTAL_KEY} reward {np.mean(totals):.3g}")
        parts.append(f"{flat} of {len(items)} groups with all rewards equal (zero advantage)")
    return " · ".join(parts)


def render_gallery(
    items: Sequence[GalleryItem], *, title: str = "Rollout gallery", thumb_px: int = 384
) -> str:
    """The HTML page (a complete document, no external resources) for `items`."""
    body = "\n".join(_item_html(i, item, thumb_px) for i, item in enumerate(items))
    return (
        '<!DOCTYPE html><html><head><meta charset="utf-8">'
        f"<title>{_esc(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{_esc(title)}</h1><p>{_esc(page_summary(items))}</p>{body}</body></html>\n"
    )


def write_gallery(
    workdir: str | Path,
    step: int,
    items: Sequence[GalleryItem],
    *,
    thumb_px: int = 384,
    title: str | None = None,
    eval_tag: str | None = None,
) -> Path:
    """Writes `<workdir>/gallery/step_<step>.html` (or `eval_<eval_tag>.html`, a held-out
    evaluation's page) and refreshes `index.html`; returns the page.

    Call on process 0 only (the trainer's logging process).
    """
    out_dir = Path(workdir) / GALLERY_SUBDIR
    out_dir.mkdir(parents=True, exist_ok=True)
    name = f"eval_{eval_tag}.html" if eval_tag is not None else f"step_{int(step)}.html"
    if "/" in name or "\\" in name:
        raise ValueError(f"bad gallery page name {name!r}")
    page = out_dir / name
    tmp = page.with_suffix(".html.tmp")
    tmp.write_text(
        render_gallery(items, title=title or f"Rollouts at step {int(step)}", thumb_px=thumb_px),
        encoding="utf-8",
    )
    tmp.replace(page)  # a reader never sees a half-written page
    _write_index(out_dir)
    return page


def _write_index(out_dir: Path) -> None:
    names = [p.name for p in out_dir.iterdir()]
    steps = sorted(int(m.group(1)) for n in names if (m := _STEP_RE.match(n)))
    evals = sorted(n for n in names if _EVAL_RE.match(n))
    links = "".join(f'<li><a href="step_{s}.html">step {s}</a></li>' for s in reversed(steps))
    held = "".join(f'<li><a href="{_esc(n)}">{_esc(_EVAL_RE.match(n).group(1))}</a></li>'
                   for n in evals)
    body = f"<h2>Training rollouts</h2><ul>{links}</ul>" if steps else ""
    body += f"<h2>Held-out evaluations</h2><ul>{held}</ul>" if evals else ""
    (out_dir / "index.html").write_text(
        '<!DOCTYPE html><html><head><meta charset="utf-8"><title>Rollout gallery</title>'
        f"<style>{_CSS}</style></head><body><h1>Rollout gallery</h1>{body}"
        "</body></html>\n",
        encoding="utf-8",
    )
