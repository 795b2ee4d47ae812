"""The review page: one self-contained index.html that shows a folder of predictions worst first.

`lungseg predict` and `lungseg evaluate` (and the evaluate stage, for the test split) write it
into their output folder. Everything is inline (CSS, script, the data as JSON) and every image
is linked by a path relative to the page, so the folder can be zipped or served as it is and the
page asks nothing of the network. The cards are drawn by the script a few hundred at a time as
the user scrolls, and their thumbnails load lazily, so a page of 10,000 predictions opens at once
(bench/review_page.py).

Safety: file names reach the page only as JSON data (with <, > and & escaped, so no text can
close the script element) and are shown through textContent, never as HTML; a Content Security
Policy allows the one inline script (by its hash) and images from the folder, nothing else.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from lungseg.core.io import atomic_path, sweep_folder
from lungseg.inference.overlay import overlay_image

PAGE = "index.html"
THUMBNAILS = "thumbnails"  # overlays a few hundred px wide, for the cards
VIEWS = "views"  # the X-ray alone, for the viewer's mask toggle
THUMBNAIL_PX = 256
VIEW_PX = 1024
JPEG = {"quality": 85, "optimize": False}


@dataclass
class Card:
    """One image on the page.

    Args:
        name: the file name shown. input: the input as given (searchable, shown in the viewer).
        thumbnail, overlay, xray, errors: paths relative to the page (errors: the false positive /
            false negative picture of an evaluation); None where there is none.
        flags: the flag's reasons. estimate: the estimated Dice, or None. dice: the true Dice
            (evaluations only), or None. areas: the lung areas in words. error: why the input
            could not be read ("" when it was).
    """

    name: str
    input: str = ""
    thumbnail: str | None = None
    overlay: str | None = None
    xray: str | None = None
    errors: str | None = None
    flags: list[str] = field(default_factory=list)
    estimate: float | None = None
    dice: float | None = None
    areas: str = ""
    error: str = ""


@dataclass
class Header:
    """What the page says above the cards.

    Args:
        title: the page title, e.g. "lungseg predict: /data/xrays".
        model: the model file. trained_on: what it was trained on, in words. trained: when (the
            file's date). images: inputs listed. flagged: masks flagged. unreadable: inputs that
            could not be read. scatter: a picture of the estimated against the true Dice, or None.
    """

    title: str
    model: str = ""
    trained_on: str = ""
    trained: str = ""
    images: int = 0
    flagged: int = 0
    unreadable: int = 0
    scatter: str | None = None


def model_header(title: str, model: str | Path, info: dict) -> Header:
    """A Header naming the model, what it was trained on (its checkpoint's training_data) and when
    its file was saved; the counts are left for the caller.

    Args:
        title: the page title. model: the model file. info: the model's info (Predictor.info).
    """
    trained_on = info.get("training_data") or {}
    words = f"{trained_on.get('data')} ({trained_on.get('n_images')} images)" if trained_on else ""
    saved = time.strftime("%Y-%m-%d", time.localtime(Path(model).stat().st_mtime)) if Path(model).is_file() else ""
    return Header(title=title, model=str(model), trained_on=words, trained=saved)


def known(value) -> float | None:
    """`value` as a float, or None when it is missing: None, NaN (pandas' empty cell) or "" (a CSV's)."""
    if value is None or value == "":
        return None
    value = float(value)
    return None if math.isnan(value) else value


def worst_first(cards: list[Card]) -> list[Card]:
    """Unreadable inputs first, then by true Dice where there is one (evaluations), else by the
    estimated Dice (lowest first), else flagged before the rest; ties by name.

    Args:
        cards: the cards in any order.

    Returns:
        A new list, worst first.
    """
    def key(card: Card):
        score = known(card.dice if card.dice is not None else card.estimate)
        return (not card.error, score is None and not card.flags, math.inf if score is None else score, card.name)
    return sorted(cards, key=key)


def area_words(right_cm2, left_cm2, right_px, left_px) -> str:
    """The two lungs' areas, in cm² where the pixel spacing is known, else in pixels (each value a
    number, None, NaN or "": see `known`)."""
    right_cm2, left_cm2, right_px, left_px = map(known, (right_cm2, left_cm2, right_px, left_px))
    if right_cm2 is not None and left_cm2 is not None:
        return f"right {right_cm2:.0f} cm² · left {left_cm2:.0f} cm²"
    if right_px is not None and left_px is not None:
        return f"right {int(right_px):,} px · left {int(left_px):,} px"
    return ""


# --------------------------------------------------------------------------- pictures


def shrunk(picture: Image.Image, longest: int) -> Image.Image:
    """`picture` with its longest side at most `longest` px (a copy; never enlarged)."""
    copy = picture.copy()
    copy.thumbnail((longest, longest), Image.Resampling.BILINEAR)
    return copy


def save_jpeg(picture: Image.Image, path: Path, sweep: bool = True) -> None:
    """Write `picture` as a JPEG, atomically (sweep: as lungseg.core.io.atomic_path)."""
    with atomic_path(path, sweep) as tmp:
        picture.save(tmp, format="JPEG", **JPEG)


def write_card_pictures(folder: Path, stem: str, grey: np.ndarray, mask: np.ndarray, alpha: float = 0.4,
                        sweep: bool = False) -> tuple[str, str]:
    """The card's thumbnail (the overlay, at most THUMBNAIL_PX) and the viewer's X-ray (at most
    VIEW_PX), as JPEGs under `folder`.

    Args:
        folder: the output folder (the page's). stem: the image's output name.
        grey: the X-ray, H x W uint8. mask: its mask, H x W bool or 0/1. alpha: the overlay's opacity.
        sweep: clear stale temporaries of the folders first; callers writing many images sweep the
            folders once instead (sweep_pictures) and leave this False.

    Returns:
        The two paths, relative to `folder`.
    """
    xray = Image.fromarray(grey)
    small = shrunk(xray, THUMBNAIL_PX)
    small_mask = np.asarray(Image.fromarray(np.asarray(mask, np.uint8) * 255).resize(small.size, Image.Resampling.NEAREST)) > 127
    thumbnail, view = f"{THUMBNAILS}/{stem}.jpg", f"{VIEWS}/{stem}.jpg"
    save_jpeg(overlay_image(np.asarray(small), small_mask, alpha=alpha), folder / thumbnail, sweep)
    save_jpeg(shrunk(xray, VIEW_PX), folder / view, sweep)
    return thumbnail, view


def sweep_pictures(folder: Path, *extra: str) -> None:
    """Remove what killed writers left in the pictures' folders (THUMBNAILS, VIEWS and `extra`), once
    before a run writes thousands of pictures (lungseg.core.io.sweep_folder)."""
    for name in (THUMBNAILS, VIEWS, *extra):
        sweep_folder(folder / name)


# --------------------------------------------------------------------------- the page


def page(cards: list[Card], header: Header) -> str:
    """The whole index.html for `cards` (shown in the order given) under `header`."""
    data = json.dumps({"header": asdict(header), "cards": [_plain(card) for card in cards]}, ensure_ascii=False,
                      allow_nan=False)
    data = data.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")
    digest = base64.b64encode(hashlib.sha256(SCRIPT.encode()).digest()).decode()
    policy = (f"default-src 'none'; img-src 'self' file: data:; style-src 'unsafe-inline'; "
              f"script-src 'sha256-{digest}'; base-uri 'none'; form-action 'none'")
    return (TEMPLATE.replace("{{policy}}", policy).replace("{{style}}", STYLE).replace("{{script}}", SCRIPT)
            .replace("{{title}}", html.escape(header.title, quote=False)).replace("{{data}}", data))


def write_page(folder: str | Path, cards: list[Card], header: Header) -> Path:
    """Write index.html into `folder` (atomically) and return its path.

    Args:
        folder: the output folder; every path in `cards` is relative to it.
        cards: the images, in the order the page shows them (worst_first).
        header: what the page says above them.
    """
    path = Path(folder) / PAGE
    with atomic_path(path) as tmp:
        tmp.write_text(page(cards, header), encoding="utf-8")
    return path


def _plain(card: Card) -> dict:
    values = asdict(card)
    for key in ("estimate", "dice"):
        value = known(values[key])
        values[key] = None if value is None else round(value, 4)
    return values



TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="{{policy}}">
<meta name="referrer" content="no-referrer">
<title>{{title}}</title>
<style>{{style}}</style>
</head>
<body>
<header>
  <h1 id="title"></h1>
  <p id="model"></p>
  <p id="counts"></p>
  <div id="tools">
    <label><input type="checkbox" id="only-flagged"> flagged only</label>
    <label><input type="checkbox" id="only-errors"> unreadable only</label>
    <input type="search" id="search" placeholder="search file names" aria-label="search file names">
    <span id="shown"></span>
  </div>
  <p class="help">Worst first. Click a card or press Enter on it to open it; in the viewer, ← → move
  between cases, M toggles the mask, E the errors (evaluations), Esc closes.</p>
  <figure id="scatter" hidden><img alt="estimated against true Dice"><figcaption>estimated against true Dice</figcaption></figure>
</header>
<main id="grid" aria-label="predictions"></main>
<div id="more" aria-hidden="true"></div>
<div id="viewer" hidden role="dialog" aria-modal="true" aria-label="image viewer">
  <div id="viewer-bar"><span id="viewer-name"></span><span id="viewer-info"></span><span id="viewer-mode"></span>
  <button id="viewer-close" aria-label="close">×</button></div>
  <img id="viewer-image" alt="">
  <p id="viewer-error"></p>
</div>
<script type="application/json" id="lungseg-data">{{data}}</script>
<script>{{script}}</script>
</body>
</html>
"""

STYLE = """
body{margin:0;font:14px/1.4 system-ui,sans-serif;background:#111;color:#eee}
header{padding:12px 16px;background:#1c1c1c;position:sticky;top:0;z-index:2;border-bottom:1px solid #333}
h1{font-size:18px;margin:0 0 4px}header p{margin:2px 0;color:#bbb}.help{font-size:12px;color:#888}
#tools{display:flex;gap:16px;align-items:center;margin:6px 0}#search{padding:4px 8px;min-width:16em}
#scatter{margin:6px 0}#scatter img{max-height:180px}#scatter figcaption{font-size:12px;color:#888}
#grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(220px,1fr));gap:10px;padding:12px 16px}
.card{background:#1e1e1e;border:1px solid #333;border-radius:6px;padding:6px;cursor:pointer;color:inherit;text-align:left;content-visibility:auto;contain-intrinsic-size:auto 300px}
.card:focus{outline:2px solid #4aa3ff}.card.flagged{border-color:#E69F00}.card.unreadable{border-color:#d55}
.card img{width:100%;aspect-ratio:1;object-fit:contain;background:#000;display:block}
.card .name{font-weight:600;overflow:hidden;text-overflow:ellipsis;white-space:nowrap;margin-top:4px}
.card .meta{font-size:12px;color:#aaa}.card .problem{font-size:12px;color:#f88;word-break:break-word}
.badge{display:inline-block;font-size:11px;padding:1px 6px;margin:2px 4px 0 0;border-radius:8px;background:#E69F00;color:#000}
.placeholder{width:100%;aspect-ratio:1;background:#2a1515;display:flex;align-items:center;justify-content:center;color:#f88}
#more{height:40px}
#viewer{position:fixed;inset:0;background:rgba(0,0,0,.94);z-index:5;display:flex;flex-direction:column}
#viewer[hidden]{display:none}
#viewer-bar{display:flex;gap:16px;padding:8px 16px;align-items:center}#viewer-name{font-weight:600}
#viewer-close{margin-left:auto;font-size:20px;background:none;color:#eee;border:0;cursor:pointer}
#viewer-image{flex:1;min-height:0;object-fit:contain;image-rendering:auto}
#viewer-error{color:#f88;padding:0 16px}
"""

SCRIPT = r"""
"use strict";
const DATA = JSON.parse(document.getElementById("lungseg-data").textContent);
const CHUNK = 60;
const grid = document.getElementById("grid"), more = document.getElementById("more");
let shown = [], drawn = 0, current = -1, mode = "overlay";

function href(path) { return path.split("/").map(encodeURIComponent).join("/"); }
function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  return node;
}
function fixed(value) { return value === null ? "" : value.toFixed(3); }
function describe(card) {
  const parts = [];
  if (card.dice !== null) parts.push("Dice " + fixed(card.dice));
  if (card.estimate !== null) parts.push("estimated " + fixed(card.estimate));
  if (card.areas) parts.push(card.areas);
  return parts.join(" · ");
}

function header() {
  const h = DATA.header;
  document.getElementById("title").textContent = h.title;
  const model = [h.model && "model " + h.model, h.trained_on && "trained on " + h.trained_on, h.trained && "saved " + h.trained];
  document.getElementById("model").textContent = model.filter(Boolean).join(" · ");
  document.getElementById("counts").textContent =
    h.images + " image(s) · " + h.flagged + " flagged · " + h.unreadable + " could not be read";
  if (h.scatter) {
    const figure = document.getElementById("scatter");
    figure.querySelector("img").src = href(h.scatter);
    figure.hidden = false;
  }
}

function cardNode(card, position) {
  const node = el("div", "card" + (card.flags.length ? " flagged" : "") + (card.error ? " unreadable" : ""));
  node.tabIndex = 0;
  node.dataset.position = position;
  node.setAttribute("role", "button");
  if (card.thumbnail) {
    const img = el("img");
    img.loading = "lazy";
    img.decoding = "async";
    img.alt = card.name;
    img.src = href(card.thumbnail);
    node.appendChild(img);
  } else {
    node.appendChild(el("div", "placeholder", "not read"));
  }
  node.appendChild(el("div", "name", card.name));
  for (const reason of card.flags) node.appendChild(el("span", "badge", reason));
  node.appendChild(el("div", "meta", describe(card)));
  if (card.error) node.appendChild(el("div", "problem", card.error));
  node.addEventListener("click", () => open(position));
  node.addEventListener("keydown", (event) => { if (event.key === "Enter") { event.preventDefault(); open(position); } });
  return node;
}

function drawMore() {
  const end = Math.min(drawn + CHUNK, shown.length);
  const batch = document.createDocumentFragment();
  for (; drawn < end; drawn++) batch.appendChild(cardNode(shown[drawn], drawn));
  grid.appendChild(batch);
}

function filter() {
  const flagged = document.getElementById("only-flagged").checked;
  const errors = document.getElementById("only-errors").checked;
  const words = document.getElementById("search").value.trim().toLowerCase();
  shown = DATA.cards.filter((card) => (!flagged || card.flags.length) && (!errors || card.error) &&
    (!words || card.name.toLowerCase().includes(words) || card.input.toLowerCase().includes(words)));
  grid.replaceChildren();
  drawn = 0;
  drawMore();
  document.getElementById("shown").textContent = shown.length + " of " + DATA.cards.length + " shown";
}

new IntersectionObserver((entries) => {
  if (entries.some((entry) => entry.isIntersecting) && drawn < shown.length) drawMore();
}, {rootMargin: "800px"}).observe(more);

const viewer = document.getElementById("viewer"), image = document.getElementById("viewer-image");
function picture(card) {
  if (mode === "errors" && card.errors) return card.errors;
  if (mode === "xray" && card.xray) return card.xray;
  return card.overlay || card.thumbnail;
}
function show() {
  const card = shown[current];
  const path = picture(card);
  if (path) { image.src = href(path); image.hidden = false; } else { image.removeAttribute("src"); image.hidden = true; }
  image.alt = card.name;
  document.getElementById("viewer-name").textContent = (current + 1) + "/" + shown.length + "  " + card.name;
  document.getElementById("viewer-info").textContent = [describe(card), card.flags.join("; ")].filter(Boolean).join(" · ");
  const names = {overlay: "mask on (M: off)", xray: "mask off (M: on)", errors: "errors: false positive magenta, false negative green (E: back)"};
  document.getElementById("viewer-mode").textContent = names[mode];
  document.getElementById("viewer-error").textContent = card.error;
}
function open(position) {
  current = position;
  mode = "overlay";
  viewer.hidden = false;
  show();
  document.getElementById("viewer-close").focus();
}
function close() {
  viewer.hidden = true;
  const node = grid.querySelector('[data-position="' + current + '"]');
  if (node) node.focus();
}
function move(step) {
  current = Math.max(0, Math.min(shown.length - 1, current + step));
  while (drawn <= current) drawMore();
  show();
}
document.getElementById("viewer-close").addEventListener("click", close);
document.addEventListener("keydown", (event) => {
  if (viewer.hidden) return;
  const key = event.key.toLowerCase();
  if (key === "escape") close();
  else if (key === "arrowright") move(1);
  else if (key === "arrowleft") move(-1);
  else if (key === "m") { mode = mode === "overlay" ? "xray" : "overlay"; show(); }
  else if (key === "e") { mode = mode === "errors" ? "overlay" : "errors"; show(); }
  else return;
  event.preventDefault();
});
for (const id of ["only-flagged", "only-errors"]) document.getElementById(id).addEventListener("change", filter);
document.getElementById("search").addEventListener("input", filter);
header();
filter();
"""
