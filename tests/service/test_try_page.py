"""The try-it page at ``/`` in a real browser: headless Chromium with a fake microphone that plays
an espeak-ng recording, and a file picked from disk; both answers come from the real ``/intent``.

Needs Debian's chromium and chromium-driver (the README's test setup installs them) and the
shipped 4-bit model. ``QUADS_TRY_PAGE_SCREENSHOT=docs/try-it.png`` saves the page after the
recording's answer (the README's screenshot).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.live_server import Server
from tests.service_inputs import espeak, wav_bytes

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "models" / "quads-fsc-4bit.safetensors"
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")

pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None or not SHIPPED.is_file(),
    reason="needs chromium and chromium-driver (apt-get install chromium chromium-driver) and the shipped model",
)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = Server(tmp_path_factory.mktemp("try") / "server.log", QUADS_MODEL=str(SHIPPED))
    server.wait_ready()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def command_wav(tmp_path_factory) -> Path:
    """ "turn on the lights", then 2 s of silence, so a recording of ~2.5 s holds the command once."""
    samples, rate = espeak("turn on the lights")
    padded = np.concatenate([np.zeros(rate // 4, np.float32), samples, np.zeros(2 * rate, np.float32)])
    path = tmp_path_factory.mktemp("audio") / "turn_on_the_lights.wav"
    path.write_bytes(wav_bytes(padded, rate))
    return path


@pytest.fixture(scope="module")
def browser(command_wav):
    webdriver = pytest.importorskip("selenium.webdriver")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        "--window-size=900,900",
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={command_wav}%noloop",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def shown_answer(browser, timeout: float = 30) -> dict:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, timeout).until(
        lambda d: d.find_element("id", "status").text in ("Done.", "Failed.")
        or d.find_element("id", "status").text.startswith("The service answered")
    )
    assert browser.find_element("id", "error").get_attribute("hidden"), browser.find_element("id", "error").text
    return {
        "intent": browser.find_element("id", "intent").text,
        "top": [li.text for li in browser.find_elements("css selector", "#top li")],
        "timings": browser.find_element("id", "timings").text,
    }


def test_a_recorded_command_is_recognised(server, browser):
    import time

    browser.get(server.url + "/")
    assert browser.title.startswith("QUADS")
    browser.find_element("id", "record").click()
    time.sleep(2.5)  # the fake microphone plays the command, then silence
    browser.find_element("id", "stop").click()
    shown = shown_answer(browser)
    assert shown["intent"] == "activate_lights_none"
    assert len(shown["top"]) == 3 and shown["top"][0].startswith("activate_lights_none: ")
    assert "inference" in shown["timings"] and "s of audio" in shown["timings"]
    if target := os.environ.get("QUADS_TRY_PAGE_SCREENSHOT"):
        browser.save_screenshot(target)


def test_a_picked_file_gets_the_same_answer_as_the_api(server, browser, command_wav):
    browser.get(server.url + "/")
    browser.find_element("id", "file").send_keys(str(command_wav))
    shown = shown_answer(browser)
    direct = httpx.post(
        server.url + "/intent", content=command_wav.read_bytes(), headers={"Content-Type": "audio/wav"}
    ).json()
    assert shown["intent"] == direct["intent"]
    assert shown["top"] == [f"{k['intent']}: {100 * k['confidence']:.1f}%" for k in direct["top_k"]]


def test_a_sound_that_is_no_command_shows_not_understood(server, browser, tmp_path):
    from training.corpus.nonspeech import nonspeech

    tone = tmp_path / "beeps.wav"
    tone.write_bytes(wav_bytes(nonspeech("tone", np.random.default_rng(3), 2.0), 16000))
    browser.get(server.url + "/")
    browser.find_element("id", "file").send_keys(str(tone))
    shown = shown_answer(browser)
    direct = httpx.post(server.url + "/intent", content=tone.read_bytes(), headers={"Content-Type": "audio/wav"}).json()
    assert direct["understood"] is False
    assert shown["intent"] == "Not a command I know"
    assert "refused" in browser.find_element("id", "intent").get_attribute("class")
    assert shown["top"] == [f"{k['intent']}: {100 * k['confidence']:.1f}%" for k in direct["top_k"]]  # still shown


MEDIA_PLAYER = REPO / "models" / "quads-media-player-4bit.safetensors"  # built from contexts/media-player.yaml


def test_the_slots_of_a_context_model_are_shown(browser, tmp_path):
    samples, rate = espeak("switch to channel four")
    clip = tmp_path / "channel_four.wav"
    clip.write_bytes(wav_bytes(samples, rate))
    server = Server(tmp_path / "server.log", QUADS_MODEL=str(MEDIA_PLAYER))
    try:
        server.wait_ready()
        browser.get(server.url + "/")
        browser.find_element("id", "file").send_keys(str(clip))
        shown = shown_answer(browser)
        direct = httpx.post(
            server.url + "/intent", content=clip.read_bytes(), headers={"Content-Type": "audio/wav"}
        ).json()
    finally:
        server.stop()
    assert direct["understood"] is True and direct["slots"]  # the model's answer has slots to show
    assert shown["intent"] == direct["intent"]
    slots = ", ".join(f"{k}: {v}" for k, v in direct["slots"].items())
    assert browser.find_element("id", "slots").text == f"Slots: {slots}"
    top = direct["top_k"][0]
    assert shown["top"][0] == f"{top['intent']} ({slots}): {100 * top['confidence']:.1f}%"
