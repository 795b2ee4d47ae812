"""lungseg.inference.review: the review page, loaded from file:// in headless Chromium."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lungseg.inference.review import Card, Header, area_words, worst_first, write_card_pictures, write_page

HOSTILE = "<img src=x onerror=alert(1)>.png"


def cards_in(folder: Path, n: int = 6) -> list[Card]:
    """n cards with pictures on disk: estimates falling with the index, every third flagged, one unreadable."""
    rng = np.random.default_rng(0)
    cards = []
    for i in range(n):
        grey = rng.integers(0, 255, (40, 30), dtype=np.uint8)
        mask = np.zeros((40, 30), bool)
        mask[5:35, 3:12] = mask[5:35, 18:27] = True
        thumbnail, xray = write_card_pictures(folder, f"case-{i}", grey, mask)
        cards.append(Card(name=f"case-{i}.png", input=f"/data/case-{i}.png", thumbnail=thumbnail, overlay=thumbnail,
                          xray=xray, flags=["estimated Dice 0.800"] if i % 3 == 0 else [], estimate=0.99 - 0.02 * i,
                          areas=area_words(None, None, 100 + i, 90)))
    cards.append(Card(name="broken.dcm", input="/data/broken.dcm", error="broken.dcm: not a DICOM file"))
    return cards


@pytest.fixture
def loaded(browser, tmp_path):
    """Write a page of cards_in, open it, and record console errors and every request it makes."""
    def load(cards: list[Card], header: Header | None = None):
        path = write_page(tmp_path, worst_first(cards), header or Header("lungseg predict: /data", images=len(cards)))
        page = browser.new_page()
        problems, requests = [], []
        page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
        page.on("pageerror", lambda error: problems.append(str(error)))
        page.on("dialog", lambda dialog: (problems.append("dialog: " + dialog.message), dialog.dismiss()))
        page.on("request", lambda request: requests.append(request.url))
        page.goto(path.as_uri())
        page.wait_for_load_state("load")
        return page, problems, requests
    return load


def card_names(page) -> list[str]:
    return page.locator("#grid .card .name").all_text_contents()


def test_the_page_loads_from_file_with_no_error_and_asks_only_for_its_own_files(loaded, tmp_path):
    page, problems, requests = loaded(cards_in(tmp_path))
    page.locator("#grid .card img").first.wait_for()
    page.wait_for_load_state("networkidle")
    assert problems == []
    assert requests and all(url.startswith(tmp_path.as_uri() + "/") for url in requests), requests
    sizes = page.eval_on_selector_all("#grid .card img", "images => images.map(image => image.naturalWidth)")
    assert sizes and all(size > 0 for size in sizes[:3])  # the thumbnails are where the page says


def test_one_card_per_row_worst_first(loaded, tmp_path):
    cards = cards_in(tmp_path)
    page, _, _ = loaded(cards)
    names = card_names(page)
    assert len(names) == len(cards)
    assert names[0] == "broken.dcm"  # unreadable first, then the lowest estimate
    assert names[1:] == [f"case-{i}.png" for i in reversed(range(6))]


def test_the_filters_and_the_search_narrow_the_cards(loaded, tmp_path):
    page, _, _ = loaded(cards_in(tmp_path))
    page.check("#only-flagged")
    assert card_names(page) == ["case-3.png", "case-0.png"]
    page.uncheck("#only-flagged")
    page.check("#only-errors")
    assert card_names(page) == ["broken.dcm"]
    page.uncheck("#only-errors")
    page.fill("#search", "CASE-4")
    assert card_names(page) == ["case-4.png"]
    assert page.text_content("#shown") == "1 of 7 shown"


def test_the_keyboard_opens_moves_toggles_the_mask_and_closes(loaded, tmp_path):
    page, problems, _ = loaded(cards_in(tmp_path))
    page.locator("#grid .card").nth(1).focus()
    page.keyboard.press("Enter")
    assert page.is_visible("#viewer")
    assert "case-5.png" in page.text_content("#viewer-name")
    overlay = page.get_attribute("#viewer-image", "src")
    page.keyboard.press("m")
    assert page.get_attribute("#viewer-image", "src").startswith("views/") and overlay.startswith("thumbnails/")
    page.keyboard.press("m")
    assert page.get_attribute("#viewer-image", "src") == overlay
    page.keyboard.press("ArrowRight")
    assert "case-4.png" in page.text_content("#viewer-name")
    page.keyboard.press("ArrowLeft")
    page.keyboard.press("ArrowLeft")
    assert "broken.dcm" in page.text_content("#viewer-name")
    assert "not a DICOM file" in page.text_content("#viewer-error")
    page.keyboard.press("Escape")
    assert not page.is_visible("#viewer")
    assert problems == []


def test_a_hostile_file_name_stays_text(loaded, tmp_path):
    cards = cards_in(tmp_path, 1)
    cards[0].name = cards[0].input = HOSTILE
    cards[0].flags = ["</script><script>alert(2)</script>"]
    page, problems, requests = loaded(cards, Header(HOSTILE, model="<b>model</b>"))
    page.wait_for_load_state("networkidle")
    assert HOSTILE in card_names(page)
    assert page.locator("#grid img[src='x']").count() == 0 and page.locator("b").count() == 0
    assert page.text_content("#title") == HOSTILE and page.title() == HOSTILE
    assert problems == [] and not any(url.endswith("/x") for url in requests)


def test_worst_first_without_estimates_puts_the_flagged_first():
    cards = [Card("b"), Card("a"), Card("c", flags=["one lung only"]), Card("d", error="unreadable")]
    assert [card.name for card in worst_first(cards)] == ["d", "c", "a", "b"]


def test_areas_are_in_square_centimetres_where_the_spacing_is_known():
    assert area_words(120.4, 99.6, 5000, 4000) == "right 120 cm² · left 100 cm²"
    assert area_words(float("nan"), float("nan"), 5000, 4000) == "right 5,000 px · left 4,000 px"
    assert area_words(None, None, None, None) == ""
    assert area_words("", "", "5000", "4000") == "right 5,000 px · left 4,000 px"  # as read back from predictions.csv


# --------------------------------------------------------------------------- written by lungseg predict


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    import torch
    from tiny_models import tiny_estimator

    from lungseg.model.checkpoint import make_checkpoint, save_checkpoint
    from lungseg.model.unet import UNet

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "tiny.pth"
    args = {"depth": 2, "base_width": 4}
    save_checkpoint(make_checkpoint(UNet(**args), args, {"image_size": 32, "normalize": "minmax"}, 0.5,
                                    dice_estimator=tiny_estimator(32).to_dict()), path)
    return path


def predict_into(model: Path, folder: Path, out: Path, *options) -> int:
    from lungseg.cli import main

    return main(["predict", str(model), str(folder), "--out", str(out), "--device", "cpu", "--quiet", *options])


def x_ray_folder(folder: Path) -> Path:
    """Four phantom X-rays, one of them named to run a script, one broken, and a zip predict skips."""
    from PIL import Image

    folder.mkdir()
    rng = np.random.default_rng(1)
    for name in ("a.png", "b.png", "c.png", HOSTILE):
        Image.fromarray(rng.integers(0, 255, (48, 40), dtype=np.uint8)).save(folder / name)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not a picture")
    (folder / "notes.zip").write_bytes(b"PK\x03\x04")
    return folder


def test_predict_writes_a_page_with_a_card_per_row_that_runs_nothing_it_reads(browser, tiny_model, tmp_path):
    import pandas as pd

    out = tmp_path / "out"
    assert predict_into(tiny_model, x_ray_folder(tmp_path / "in"), out) == 1  # the broken file
    table = pd.read_csv(out / "predictions.csv")
    page = browser.new_page()
    problems, requests = [], []
    page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.on("dialog", lambda dialog: (problems.append("dialog: " + dialog.message), dialog.dismiss()))
    page.on("request", lambda request: requests.append(request.url))
    page.goto((out / "index.html").as_uri())
    page.wait_for_load_state("networkidle")
    names = card_names(page)
    assert len(names) == len(table) + 1  # every row, and the skipped zip
    assert names[:2] == ["broken.png", "notes.zip"] and HOSTILE in names
    assert "could not be read" in page.text_content("#counts") and "tiny.pth" in page.text_content("#model")
    assert problems == [] and all(url.startswith(out.as_uri() + "/") for url in requests), (problems, requests)
    page.close()


def test_no_report_writes_no_page_and_no_pictures_for_it(tiny_model, tmp_path):
    out = tmp_path / "out"
    predict_into(tiny_model, x_ray_folder(tmp_path / "in"), out, "--no-report")
    assert sorted(path.name for path in out.iterdir()) == ["masks", "overlays", "predictions.csv", "run.json"]


def test_evaluate_writes_a_page_worst_true_dice_first_with_the_errors_a_key_away(browser, tiny_model, tmp_path,
                                                                                 write_pair_folder):
    import pandas as pd

    from lungseg.cli import main

    data = write_pair_folder(tmp_path / "labelled", layout="plain", n=5, metadata=False)
    out = tmp_path / "scores"
    assert main(["evaluate", "--model", str(tiny_model), "--data", str(data.root), "--out", str(out),
                 "--params", "absent.yaml", "--device", "cpu", "-q"]) == 0
    scores = pd.read_csv(out / "per_image.csv", dtype={"id": str})
    page = browser.new_page()
    problems = []
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.goto((out / "index.html").as_uri())
    names = card_names(page)
    assert names == scores.sort_values(["dice_native", "id"])["id"].tolist()  # the truth at native resolution
    assert "Dice " in page.locator("#grid .card .meta").first.text_content()
    page.locator("#grid .card").first.click()
    page.keyboard.press("e")
    assert page.get_attribute("#viewer-image", "src") == f"errors/{names[0]}.png"
    assert "false positive magenta" in page.text_content("#viewer-mode")
    assert page.is_visible("#scatter") == (out / "dice_estimate.png").is_file()
    assert problems == []
    page.close()
