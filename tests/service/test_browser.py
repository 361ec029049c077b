"""The browser page as a user meets it: `agiqa serve` started on 127.0.0.1, the page driven in headless Chromium
(Debian's `chromium` + `chromium-driver`, through selenium): choose an image, type a prompt, press Score, read the
score, rank, gate weights and heat map from the page. Skipped, saying why, only where no Chromium is installed."""
from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi", reason="the [serve] extra is not installed")
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (it comes with [dev])")
httpx = pytest.importorskip("httpx")

from agiqa.models import create_model  # noqa: E402
from agiqa.scoring.scorer import Scorer  # noqa: E402

from ._server import agiqa_serve  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="no Chromium here: apt-get install chromium "
                                "chromium-driver (.ci/run does)")


@pytest.fixture
def served(tmp_path):
    """`agiqa serve` of a tiny MA-AGIQA (MANIQA expert) as a real process; yields (url, model dir)."""
    torch.manual_seed(0)
    create_model("test_ma_agiqa", semantic_experts=()).save_pretrained(tmp_path / "model")
    with agiqa_serve(tmp_path / "model", "--max-images", "5", "--max-upload-mb", "2") as server:
        yield server.url, tmp_path / "model"


@pytest.fixture
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1200,900"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=DRIVER))
    yield driver
    driver.quit()


def test_the_page_scores_a_dropped_image_and_shows_its_heat_map(served, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url, model = served
    images = []
    for seed in (0, 1):
        path = tmp_path / f"generated_{seed}.png"
        Image.fromarray(np.random.default_rng(seed).integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(path)
        images.append(path)

    limits = httpx.get(f"{url}/info").json()["limits"]  # the command line's limits reached the service
    assert (limits["max_images"], limits["max_upload_bytes"]) == (5, 2 * 2**20)

    browser.get(url + "/")
    WebDriverWait(browser, 30).until(lambda d: d.find_element(By.ID, "model").text.startswith("model:"))
    chooser = browser.find_element(By.ID, "files")
    browser.execute_script("arguments[0].hidden = false", chooser)  # the drop zone's hidden file input
    chooser.send_keys("\n".join(str(path) for path in images))
    browser.find_element(By.ID, "prompt").send_keys("a photo of a cat")
    browser.find_element(By.ID, "score").click()
    WebDriverWait(browser, 60).until(lambda d: "2 scored" in d.find_element(By.ID, "status").text)
    WebDriverWait(browser, 30).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".result .score")) == 2)
    WebDriverWait(browser, 30).until(lambda d: all(
        img.get_attribute("complete") == "true" and int(img.get_attribute("naturalWidth")) > 0
        for img in d.find_elements(By.CSS_SELECTOR, ".result img")))

    cards = browser.find_elements(By.CSS_SELECTOR, ".result")
    assert [card.get_attribute("data-filename") for card in cards] == [path.name for path in images]
    shown = [float(card.find_element(By.CSS_SELECTOR, ".score").text) for card in cards]
    expected = Scorer(model, device="cpu", precision="fp32").score([str(path) for path in images]).scores
    assert shown == pytest.approx(expected.tolist(), abs=5e-4)  # the page shows 3 decimals
    ranks = [card.find_element(By.CSS_SELECTOR, ".rank").text for card in cards]
    best = int(np.argmax(expected))
    assert ranks[best] == "rank 1 of 2" and ranks[1 - best] == "rank 2 of 2"
    assert [gate.get_attribute("data-expert") for gate in cards[0].find_elements(By.CSS_SELECTOR, ".gate")] == \
        ["maniqa"]
    heat = cards[0].find_element(By.CSS_SELECTOR, "img.heatmap")
    assert heat.get_attribute("src").startswith("data:image/png;base64,") and heat.is_displayed()
    assert heat.size == cards[0].find_element(By.CSS_SELECTOR, "img.image").size  # drawn over the whole image
    assert "2 scored, 0 failed" in browser.find_element(By.ID, "status").text

    screenshot = tmp_path / "page.png"
    browser.save_screenshot(str(screenshot))
    shot = np.asarray(Image.open(screenshot).convert("RGB"), dtype=float)
    assert shot.std() > 10  # a rendered page, not a blank one
    if os.environ.get("AGIQA_SCREENSHOT"):
        shutil.copy(screenshot, os.environ["AGIQA_SCREENSHOT"])


KEY = "page-key-" + "k" * 23


def test_the_page_asks_for_the_key_of_a_keyed_service_once_and_scores_with_it(tmp_path, browser):
    """A keyed `agiqa serve`: the page (told by /info `auth: bearer`) asks for the key; a wrong one is refused
    (401) and asked again; with the right one, two images are scored. The key stays in this tab's sessionStorage
    (not localStorage, not the URL) and a reload does not ask again."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    torch.manual_seed(0)
    create_model("test_ma_agiqa", semantic_experts=()).save_pretrained(tmp_path / "model")
    (tmp_path / "keys.txt").write_text(KEY + "\n")
    images = []
    for seed in (0, 1):
        path = tmp_path / f"generated_{seed}.png"
        Image.fromarray(np.random.default_rng(seed).integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(path)
        images.append(path)
    expected = Scorer(tmp_path / "model", device="cpu", precision="fp32").score([str(p) for p in images]).scores

    def status(driver) -> str:
        return driver.find_element(By.ID, "status").text

    with agiqa_serve(tmp_path / "model", "--api-key-file", str(tmp_path / "keys.txt")) as served:
        browser.get(served.url + "/")
        WebDriverWait(browser, 30).until(lambda d: d.find_element(By.ID, "keybox").is_displayed())
        chooser = browser.find_element(By.ID, "files")
        browser.execute_script("arguments[0].hidden = false", chooser)
        chooser.send_keys("\n".join(str(path) for path in images))

        browser.find_element(By.ID, "key").send_keys("not-the-key")
        browser.find_element(By.ID, "usekey").click()
        WebDriverWait(browser, 10).until(lambda d: d.find_element(By.ID, "keyed").is_displayed())
        browser.find_element(By.ID, "score").click()
        WebDriverWait(browser, 60).until(lambda d: status(d).startswith("401"))
        WebDriverWait(browser, 10).until(lambda d: d.find_element(By.ID, "keybox").is_displayed())
        assert "not accepted" in browser.find_element(By.ID, "keywhy").text

        browser.find_element(By.ID, "key").send_keys(KEY)
        browser.find_element(By.ID, "usekey").click()
        WebDriverWait(browser, 10).until(lambda d: not d.find_element(By.ID, "keybox").is_displayed())
        browser.find_element(By.ID, "score").click()
        WebDriverWait(browser, 60).until(lambda d: "2 scored, 0 failed" in status(d))
        cards = browser.find_elements(By.CSS_SELECTOR, ".result")
        shown = [float(card.find_element(By.CSS_SELECTOR, ".score").text) for card in cards]
        assert shown == pytest.approx(expected.tolist(), abs=5e-4)

        assert browser.execute_script("return sessionStorage.getItem('agiqa-api-key')") == KEY
        assert browser.execute_script("return JSON.stringify(localStorage)") == "{}" and KEY not in browser.current_url
        browser.refresh()  # the same tab: the key is kept, not asked again
        WebDriverWait(browser, 30).until(lambda d: d.find_element(By.ID, "keyed").is_displayed())
        assert not browser.find_element(By.ID, "keybox").is_displayed()
    assert KEY not in served.log_text()
