"""The chat page at `/` in a real headless browser (Debian's chromium driven by playwright).

Picks an image, asks, and waits for the streamed answer, which must be the answer the
API gives for the same conversation. Set SPARSECUT_SCREENSHOT=PATH to keep a screenshot
(the README's docs/serve.png is made this way, from a trained model with SPARSECUT_SERVE_MODEL=DIR).
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest
import torch
from openai import OpenAI

from sparsecut_core.data.shapes import shapes_sample
from sparsecut_core.inference.loading import load_pretrained
from sparsecut_core.presets.build import build_from_preset
from sparsecut_core.presets.preset import load_preset
from sparsecut_core.serving.app import ServerSettings, create_app
from sparsecut_core.serving.engine import Engine
from sparsecut_core.serving.server import serve_in_thread

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="no /usr/bin/chromium (apt-get install chromium)")


@pytest.fixture(scope="module")
def served():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    folder = os.environ.get("SPARSECUT_SERVE_MODEL")
    model, processor = load_pretrained(folder) if folder else build_from_preset(load_preset("tiny"), seed=0)
    engine = Engine(model.eval(), processor)
    with serve_in_thread(create_app(engine, ServerSettings("tiny"))) as url:
        yield url
    torch.set_num_threads(threads)


def test_the_chat_page_streams_the_answer_to_a_picked_image(served, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    sample = shapes_sample("test", 3, 224)
    sample.image.save(tmp_path / "shapes.png")
    question = "How many shapes are there? Answer the question using a single word or phrase."
    with sync_api.sync_playwright() as driver:
        browser = driver.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=str(CHROMIUM), headless=True, args=FLAGS,
            viewport={"width": 820, "height": 560})
        try:
            page = browser.new_page()
            page.goto(served)
            sync_api.expect(page.locator("#model")).to_have_text("tiny")
            page.set_input_files("#file", str(tmp_path / "shapes.png"))
            sync_api.expect(page.locator("#preview")).to_be_visible()
            page.fill("#question", question)
            page.click("#send")
            answer = page.locator(".assistant[data-done=true]")
            sync_api.expect(answer).to_have_count(1, timeout=60_000)
            shown = answer.inner_text().strip()
            assert page.locator(".error").count() == 0
            page.screenshot(path=os.environ.get("SPARSECUT_SCREENSHOT") or str(tmp_path / "page.png"))
        finally:
            browser.close()
    image = data_url(tmp_path / "shapes.png")
    reply = OpenAI(base_url=f"{served}/v1", api_key="unused", max_retries=0).chat.completions.create(
        model="tiny", max_tokens=64, messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": image}}, {"type": "text", "text": question}]}])
    assert shown == reply.choices[0].message.content.strip() and shown


def data_url(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()
