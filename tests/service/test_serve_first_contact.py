"""`agiqa serve` at first contact (issue #33): `--help` shows every default, a training run folder serves its model/
with a note, and the page at / says what a score means ("better than 83 % of the agiqa3k training images") when the
model records its training labels (mos_distribution.json)."""
from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from agiqa.cli import main
from agiqa.models import create_model
from agiqa.scoring.distribution import DISTRIBUTION_FILE

from ._server import agiqa_serve, free_port

pytest.importorskip("fastapi", reason="the [serve] extra is not installed")


def test_serve_help_shows_the_defaults(capsys):
    with pytest.raises(SystemExit) as done:
        main(["serve", "--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    text = text[text.index("options:"):]  # the option list, not the usage line
    for flag, default in {"--host": "127.0.0.1", "--port": "8000", "--device": "auto", "--precision": "auto",
                          "--batch-size": "16", "--max-wait-ms": "5.0", "--max-queue": "256", "--timeout": "60.0",
                          "--max-upload-mb": "64.0", "--max-images": "64", "--max-pixels": "89478485",
                          "--client-rate": "1000.0"}.items():
        entry = text[text.index(f" {flag} "):]
        entry = entry[:entry.index(" --", 2)] if " --" in entry[2:] else entry  # up to the next option
        assert f"(default: {default})" in entry, (flag, entry)
    assert "(default: None)" not in text and "(default: False)" not in text
    for flag, default in {"--client-max-in-flight": "max(2, --max-queue / 4)",
                          "--client-burst": "max(--client-rate, --max-images)",
                          "--client-max-queued": "max(--max-images, --max-queue / 2)"}.items():
        entry = "".join(text[text.index(f" {flag} "):].split())  # argparse may wrap inside "--max-queue"
        assert "".join(f"(default: {default})".split()) in entry, flag  # derived from other flags


def test_serve_takes_a_run_folder_for_its_model_with_a_note(tmp_path, capsys, monkeypatch):
    import uvicorn
    from fastapi.testclient import TestClient

    create_model("test_ma_agiqa", semantic_experts=()).save_pretrained(tmp_path / "run" / "model")
    served = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: served.update(app=app, **kwargs))
    assert main(["serve", str(tmp_path / "run"), "--device", "cpu", "--port", str(free_port())]) == 0
    err = capsys.readouterr().err
    assert f"note: {tmp_path / 'run'} is a training run folder; scoring its model folder" in err
    assert "no percentile" in err  # what the scores mean, said once at start-up
    assert TestClient(served["app"]).get("/info").json()["image_size"] == 32


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")


@pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="no Chromium here: apt-get install chromium chromium-driver")
def test_the_page_says_where_each_score_falls_among_the_training_images(tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (it comes with [dev])")
    pytest.importorskip("httpx")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from agiqa.scoring.scorer import Scorer

    torch.manual_seed(0)
    folder = tmp_path / "model"
    create_model("test_ma_agiqa", semantic_experts=()).save_pretrained(folder)
    images = []
    for seed in (0, 1, 2):
        path = tmp_path / f"generated_{seed}.png"
        Image.fromarray(np.random.default_rng(seed).integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(path)
        images.append(path)
    scores = Scorer(folder, device="cpu", precision="fp32").score([str(p) for p in images]).scores
    spread = scores.max() - scores.min()
    quantiles = np.linspace(scores.min() - spread, scores.max() + spread, 101)
    (folder / DISTRIBUTION_FILE).write_text(json.dumps({"mos_quantiles": quantiles.tolist(), "dataset": "agiqa3k"}))
    expected = Scorer(folder, device="cpu", precision="fp32").score([str(p) for p in images]).percentiles

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1200,900"):
        options.add_argument(flag)
    with agiqa_serve(folder) as served:
        browser = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=DRIVER))
        try:
            browser.get(served.url + "/")
            WebDriverWait(browser, 30).until(lambda d: d.find_element(By.ID, "model").text.startswith("model:"))
            assert "agiqa3k training images" in browser.find_element(By.ID, "scale").text
            chooser = browser.find_element(By.ID, "files")
            browser.execute_script("arguments[0].hidden = false", chooser)
            chooser.send_keys("\n".join(str(path) for path in images))
            browser.find_element(By.ID, "score").click()
            WebDriverWait(browser, 60).until(lambda d: "3 scored" in d.find_element(By.ID, "status").text)
            shown = [card.find_element(By.CSS_SELECTOR, ".meaning").text
                     for card in browser.find_elements(By.CSS_SELECTOR, ".result")]
        finally:
            browser.quit()
    assert shown == [f"better than {math.floor(p + 0.5)} % of the agiqa3k training images" for p in expected]
