"""The review page on a large run: does a page of 10,000 predictions open and scroll without stalling?

    python bench/review_page.py [--cards 10000]

Writes a page of N phantom cards (each with its own thumbnail, as predict writes them) and opens
it in headless Chromium twice: as lungseg writes it (cards drawn in chunks as the user scrolls,
thumbnails loaded lazily) and, as the baseline, the same page drawing every card with eager
images at once. For each: the time until the first card is on screen, the time until the page
is idle, the JavaScript heap and the document's node count once loaded, and the longest frame
while scrolling 150 px a frame for 1,500 frames (or to the end), and how many frames took over
100 ms. Needs playwright and Debian's chromium (apt-get install chromium).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from common import print_table, write_results

from lungseg.inference import review
from lungseg.inference.review import Card, Header, write_card_pictures, write_page

FIRST_CARD = "() => document.querySelector('#grid .card') !== null"
SCROLL = """async () => {
  let longest = 0, slow = 0, frames = 0, last = performance.now();
  for (let i = 0; i < 1500; i++) {
    window.scrollBy(0, 150);  // 9,000 px a second at 60 frames a second: fast, steady scrolling
    await new Promise(requestAnimationFrame);
    const now = performance.now(); longest = Math.max(longest, now - last);
    frames++; if (now - last > 100) slow++; last = now;
    if (window.innerHeight + window.scrollY >= document.body.scrollHeight - 5 &&
        document.querySelectorAll('#grid .card').length >= DATA_CARDS) break;
  }
  return [longest, slow, frames];
}"""


def make_cards(folder: Path, n: int) -> list[Card]:
    """n cards with their own thumbnail and X-ray view: 16 phantom pictures, each written n/16 times."""
    rng = np.random.default_rng(0)
    pictures = []
    for _ in range(16):
        grey = rng.integers(0, 255, (512, 448), dtype=np.uint8)
        mask = np.zeros((512, 448), bool)
        mask[60:450, 40:200] = mask[60:450, 250:410] = True
        pictures.append((grey, mask))
    cards = []
    for i in range(n):
        grey, mask = pictures[i % 16]
        thumbnail, xray = write_card_pictures(folder, f"case-{i:05d}", grey, mask)
        cards.append(Card(name=f"case-{i:05d}.png", input=f"/archive/case-{i:05d}.png", thumbnail=thumbnail,
                          overlay=thumbnail, xray=xray, estimate=float(rng.uniform(0.8, 1.0)),
                          flags=["estimated Dice 0.850"] if i % 10 == 0 else []))
    return review.worst_first(cards)


def measure(browser, path: Path, n: int) -> dict:
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    client = page.context.new_cdp_session(page)
    client.send("Performance.enable")
    started = time.perf_counter()
    page.goto(path.as_uri(), wait_until="commit")
    page.wait_for_function(FIRST_CARD, polling="raf", timeout=300_000)
    first = time.perf_counter() - started
    page.wait_for_load_state("load", timeout=600_000)
    loaded = time.perf_counter() - started
    metrics = {m["name"]: m["value"] for m in client.send("Performance.getMetrics")["metrics"]}
    longest_frame, slow, frames = page.evaluate(SCROLL.replace("DATA_CARDS", str(n)))
    page.close()
    return {"first_card_s": first, "loaded_s": loaded, "js_heap_mb": metrics["JSHeapUsedSize"] / 2**20,
            "dom_nodes": int(metrics["Nodes"]), "longest_scroll_frame_ms": longest_frame,
            "scroll_frames_over_100ms": f"{slow} of {frames}"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cards", type=int, default=10_000)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    executable = shutil.which("chromium")
    if executable is None:
        raise SystemExit("needs Debian's chromium: apt-get install chromium")
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        cards = make_cards(folder, args.cards)
        header = Header(f"{args.cards} phantom predictions", images=args.cards, flagged=sum(bool(c.flags) for c in cards))
        lazy = write_page(folder, cards, header)
        eager_script = review.SCRIPT.replace("const CHUNK = 60;", "const CHUNK = 1e9;").replace('img.loading = "lazy";', "")
        original, review.SCRIPT = review.SCRIPT, eager_script
        try:
            eager = write_page(folder / "eager", [_up(card) for card in cards], header)
        finally:
            review.SCRIPT = original
        with sync_playwright() as driver:
            browser = driver.chromium.launch(executable_path=executable, args=["--no-sandbox"])
            rows = [{"page": "lungseg (chunks of 60, lazy images)", **measure(browser, lazy, args.cards)},
                    {"page": "baseline (every card, eager images)", **measure(browser, eager, args.cards)}]
            browser.close()
    for key in ("first_card_s", "loaded_s", "js_heap_mb", "dom_nodes"):
        rows[0][f"{key}_vs_baseline"] = rows[0][key] / rows[1][key]
    print_table(f"review page, {args.cards} cards (headless Chromium)", rows)
    write_results("review_page", rows, cards=args.cards)


def _up(card: Card) -> Card:
    """The card as seen from a page one folder down (the baseline's own folder)."""
    moved = {key: f"../{getattr(card, key)}" for key in ("thumbnail", "overlay", "xray") if getattr(card, key)}
    return Card(**{**card.__dict__, **moved})


if __name__ == "__main__":
    main()
