"""The web page (`python -m fast.web`) in a real browser: Debian's Chromium, headless, driven by Selenium.

The page runs as a user starts it, in its own process on 127.0.0.1, on the tiny test checkpoints with a
switch and a ROI adapter fitted in seconds to one toy scene with a small target (the siblings' own model
and data code), so the agent itself decides System 2, names the object and proposes its region. No
browser is a failure, never a skip: `make test` installs one (`make browser`).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from test_fast_agent import TINY_PERCEIVER, _one_thread, fast_checkpoints  # noqa: F401
from transformers import AutoProcessor, LlavaForConditionalGeneration

import fast.web as web
from fast.model import read_roi_config
from fast.trace import Trace
from fast.web import ERROR_MARK, IDS, Page, decision_markdown, parse_args, read_upload, write_toy_examples
from playground.demo import AGENT_KNOBS
from playground.toyworld import SHORT_ANSWER_SUFFIX
from playground.toyworld.scene import make_scene
from playground.toyworld.world import missing_objects_answer, pattern_question, roi_box
from roillava.answer import pixel_values
from roillava.model import add_lora as roi_add_lora
from roillava.roi import stage1_prompt
from swillava.data import SealCollator, SealDataset
from swillava.infer import SwitchAdapter
from swillava.model import SwiConfig, add_lora, build_switch

ROOT = Path(__file__).resolve().parent.parent
APT = "apt-get update && apt-get install -y chromium chromium-driver"


def find_browser() -> tuple[str, str]:
    """Chromium and its driver from the system; a clear failure (with the install command) without them."""
    browser = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        pytest.fail(
            f"the page test needs Chromium and chromedriver (found browser={browser}, driver={driver}); "
            f"install them with `make browser` or `{APT}`",
            pytrace=False,
        )
    return browser, driver


@pytest.fixture(scope="module")
def hard_scene():
    """A toy scene with a small target and its pattern question (hard: the stripes blur at 112 px)."""
    scene = make_scene(random.Random("fast-web-test"), size="small")
    question = pattern_question(scene.target)
    assert question.difficulty == "hard"
    return scene, question


ROI_MAX_NEW_TOKENS = 48  # the box text, digit by digit


def _fit(model: torch.nn.Module, batch: dict, steps: int = 60) -> None:
    """A few AdamW steps on one example: enough for a tiny adapter to repeat its answer."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    model.train()
    for _ in range(steps):
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()


def roi_text(scene) -> str:
    """The toy world's Chain-of-Spot label for the scene's target, as the ROI adapter writes it."""
    return "[" + ", ".join(f"{v:.3f}" for v in roi_box(scene.target.bbox, *scene.image.size)) + "]"


@pytest.fixture(scope="module")
def web_checkpoints(tiny_base, hard_scene, tmp_path_factory) -> dict[str, Path]:
    """The test checkpoints, with a switch and a ROI adapter fitted in a few seconds (60 AdamW steps each,
    the siblings' own model and data code) to the hard scene: the switch says SEAL's missing-objects
    sentence naming its target, the ROI adapter gives the toy world's region for it. The seg adapter
    stays random (its mask is noise)."""
    scene, question = hard_scene
    start = time.perf_counter()
    ckpts = fast_checkpoints(tiny_base)
    base = ckpts["base"]
    processor = AutoProcessor.from_pretrained(base)
    root = tmp_path_factory.mktemp("web_adapters")
    scene.image.save(root / "hard.png")

    record = {
        "image": "hard.png",
        "conversations": [
            {"from": "human", "value": "<image>\n" + question.text},
            {"from": "gpt", "value": missing_objects_answer([question.target_name])},
        ],
    }
    (root / "seal.json").write_text(json.dumps([record]))
    padded = AutoProcessor.from_pretrained(base)
    padded.image_processor.do_pad = True  # the switch sees padded images, in training and in the agent
    torch.manual_seed(0)
    switch = build_switch(
        LlavaForConditionalGeneration.from_pretrained(base),
        processor.tokenizer,
        SwiConfig(base_model=str(base), object_projector=TINY_PERCEIVER),
    )
    add_lora(switch, r=8, alpha=16, dropout=0.0, freeze_mlp_projector=True)
    data = SealDataset(
        str(root / "seal.json"), str(root), tokenizer=processor.tokenizer,
        image_processor=padded.image_processor, layout=switch.token_layout(), template="v1", max_length=1024,
    )  # fmt: skip
    _fit(switch, SealCollator(processor.tokenizer.pad_token_id)([data[0]]))
    switch.save_pretrained(root / "switch")
    processor.save_pretrained(root / "switch")
    decision = SwitchAdapter.from_pretrained(root / "switch", max_new_tokens=40).decide(
        scene.image, question.text
    )
    assert decision.missing_objects == [question.target_name], decision.text

    llava = LlavaForConditionalGeneration.from_pretrained(base)
    torch.manual_seed(0)
    roi = roi_add_lora(llava, r=8, alpha=16, dropout=0.0, freeze_projector=True)
    config, _ = read_roi_config(ckpts["roi"], max_new_tokens=ROI_MAX_NEW_TOKENS)  # what the agent will ask
    prompt = stage1_prompt(
        question.text, scene.image, processor=processor, model_config=llava.config, config=config
    )
    answer = processor.tokenizer(roi_text(scene), add_special_tokens=False).input_ids
    answer.append(processor.tokenizer.eos_token_id)
    batch = {
        "input_ids": torch.tensor([prompt.input_ids + answer]),
        "labels": torch.tensor([[-100] * len(prompt.input_ids) + answer]),
        "pixel_values": pixel_values(processor, [prompt]),
    }
    _fit(roi, batch)
    roi.save_pretrained(root / "roi")
    processor.save_pretrained(root / "roi")
    print(f"checkpoints and fitted adapters in {time.perf_counter() - start:.1f} s")
    return {**ckpts, "switch": root / "switch", "roi": root / "roi", "image": root / "hard.png"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def page_url(web_checkpoints, tmp_path_factory):
    """`python -m fast.web` on a free port of 127.0.0.1, as a user starts it; stopped after the tests."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("web_server") / "server.log"
    c = web_checkpoints
    cmd = [
        sys.executable, "-m", "fast.web", "--base", str(c["base"]), "--switch", str(c["switch"]),
        "--roi", str(c["roi"]), "--seg", str(c["seg"]), "--port", str(port),
        "--switch-max-new-tokens", "40", "--roi-max-new-tokens", str(ROI_MAX_NEW_TOKENS), "--max-new-tokens", "4",
    ]  # fmt: skip
    # one intra-op thread: tiny models, and far faster on a busy CPU (as the in-process tests)
    env = {**os.environ, "GRADIO_TEMP_DIR": str(log_path.parent / "gradio"), "OMP_NUM_THREADS": "1"}
    with open(log_path, "w") as log:
        server = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through a proxy
    try:
        deadline = time.monotonic() + 120
        while True:
            if server.poll() is not None:
                pytest.fail(
                    f"python -m fast.web exited ({server.returncode}):\n{log_path.read_text()[-4000:]}"
                )
            try:
                with direct.open(url, timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the page did not come up in 120 s:\n{log_path.read_text()[-4000:]}")
            time.sleep(0.5)
        print(f"page up in {time.monotonic() - deadline + 120:.1f} s")
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver_path = find_browser()
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager never downloads a driver
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1600",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium')}",
        # no host but this machine resolves: a page that waited on a font or CDN would show it here
        "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
    ):  # fmt: skip
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    yield driver
    driver.quit()


def _css(driver, key: str, inner: str = ""):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, f"#{IDS[key]} {inner}".strip())


def _status(driver) -> str:
    """The status message the handler wrote (not Gradio's progress line beside it)."""
    return " ".join(
        e.text for e in driver.find_elements("css selector", f"#{IDS['status']} [data-testid='markdown']")
    )


def _busy(driver) -> bool:
    """Whether any output still shows Gradio's progress tracker (hidden when the event has finished)."""
    trackers = driver.find_elements("css selector", "[data-testid='status-tracker']")
    return any("hide" not in (t.get_attribute("class") or "").split() for t in trackers)


def _page_errors(driver) -> list[str]:
    """What the page shows as an error: our message, or a Gradio toast."""
    toasts = [t.text for t in driver.find_elements("css selector", "[data-testid='toast-body']")]
    status = _status(driver)
    return toasts + ([status] if ERROR_MARK in status else [])


def _ask(driver, question: str, *, wait_for: str, timeout: float = 60) -> float:
    """Types the question, clicks Ask and waits until the event has finished with a new status that
    shows `wait_for` (or an error); returns the seconds from the click."""
    from selenium.webdriver.support.ui import WebDriverWait

    box = _css(driver, "question", "textarea")
    box.clear()
    box.send_keys(question)
    previous = _status(driver)
    start = time.perf_counter()
    _css(driver, "ask").click()

    def settled(d) -> bool:
        if d.find_elements("css selector", "[data-testid='toast-body']"):
            return True
        status = _status(d)
        return not _busy(d) and status != previous and (wait_for in status or ERROR_MARK in status)

    WebDriverWait(driver, timeout, poll_frequency=0.1).until(settled)
    return time.perf_counter() - start


def test_page_answers_a_hard_toy_question_with_system2(
    browser, page_url, web_checkpoints, hard_scene, tmp_path, request
):
    """No browser fails first (`browser` before `page_url`), in seconds."""
    from selenium.webdriver.support.ui import WebDriverWait

    scene, question = hard_scene
    driver = browser
    # what the page showed last, also when a step below fails
    request.addfinalizer(lambda: driver.save_screenshot(str(tmp_path / "fast-web-last.png")))
    driver.get(page_url)
    WebDriverWait(driver, 60).until(
        lambda d: d.find_elements("css selector", f"#{IDS['image']} input[type=file]")
    )
    assert "Toy examples" in driver.page_source  # the generated toy scenes are offered

    # bad input first: messages in the page, and the page still works afterwards
    _ask(driver, "", wait_for="type a question")
    assert "type a question" in _status(driver)
    _ask(driver, question.text, wait_for="upload an image")
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("not an image")
    _css(driver, "image", "input[type=file]").send_keys(str(not_an_image))
    _ask(driver, question.text + " ", wait_for="not a readable image")
    assert "notes.png is not a readable image" in _status(driver)

    # the hard question on the uploaded toy image
    _css(driver, "image", "button[aria-label='Remove Image']").click()
    WebDriverWait(driver, 10).until(lambda d: _css(d, "image", "input[type=file]"))
    _css(driver, "image", "input[type=file]").send_keys(str(web_checkpoints["image"]))
    WebDriverWait(driver, 30).until(lambda d: d.find_elements("css selector", f"#{IDS['image']} img"))
    seconds = _ask(driver, question.text, wait_for="Answered")
    driver.save_screenshot(str(tmp_path / "fast-web.png"))
    print(f"page answered in {seconds:.2f} s; screenshot {tmp_path / 'fast-web.png'}")
    assert _page_errors(driver) == []
    assert "Answered by System 2" in _status(driver)
    decision = _css(driver, "decision").text
    assert "System 2" in decision and question.target_name in decision
    assert "Region of interest" in decision and roi_text(scene) in decision and "unusable ROI" not in decision
    evidence = _css(driver, "evidence", "textarea").get_attribute("value")
    assert f"{question.target_name} <object> at location" in evidence
    assert "switch_answer" in _css(driver, "timing").text
    overlay = _css(driver, "overlay", "img")
    assert (
        driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", overlay)
        == scene.image.width
    )
    assert (tmp_path / "fast-web.png").stat().st_size > 0
    # nothing left the machine: every request the page made went to the app
    urls = set()
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.add(message["params"]["request"]["url"])
    outside = [u for u in urls if u.startswith(("http", "ws")) and not u.startswith(page_url)]
    assert outside == [], outside


def test_page_parts_and_messages_without_a_browser(tmp_path):
    """The handler's messages for bad input come before any model runs; the decision names its reason."""
    page = Page(agent=None)  # no question below reaches the agent
    status, *rest = page.ask(None, "   ")
    assert ERROR_MARK in status and "type a question" in status and rest == ["", "", None, "", "", None]
    assert "upload an image" in page.ask(None, "What?")[0]
    (tmp_path / "empty.jpg").write_bytes(b"")
    image, problem = read_upload({"path": str(tmp_path / "empty.jpg"), "orig_name": "empty.jpg"})
    assert image is None and "empty.jpg is not a readable image" in problem and str(tmp_path) not in problem
    image, problem = read_upload({"path": str(tmp_path / "gone.png"), "orig_name": "gone.png"})
    assert image is None and "gone.png" in problem
    rows = write_toy_examples(tmp_path / "examples")
    assert len(rows) == 4 and all(Path(p).is_file() and q.endswith("?") for p, q in rows)
    trace = Trace("q", "What?", None, "fast", "roi+seg", system="system2", missing_objects=["red object"])
    assert "**System 2**" in decision_markdown(trace) and "**red object**" in decision_markdown(trace)
    trace = Trace("q", "What?", None, "fast", "roi+seg", system="system1")
    assert decision_markdown(trace).startswith("**System 1**: the switch answered directly")


def test_command_line_takes_the_agent_options_and_defaults_to_the_demo(tmp_path, monkeypatch, capsys):
    config, options = parse_args(
        [
            "--base",
            "B",
            "--switch",
            "S",
            "--roi",
            "R",
            "--seg",
            "G",
            "--mode",
            "system2-always",
            "--port",
            "9",
        ]
    )
    assert (config.base, config.switch, config.roi, config.seg, config.mode) == (
        "B",
        "S",
        "R",
        "G",
        "system2_always",
    )
    assert (options.host, options.port, options.examples, config.question_suffix) == (
        "127.0.0.1",
        9,
        True,
        "",
    )
    with pytest.raises(SystemExit):
        parse_args(["--base", "B", "--switch", "S", "--roi", "R", "--seg", "G", "--image", "x.jpg"])
    assert "drop --image" in capsys.readouterr().err
    monkeypatch.setattr(web, "DEMO_CHECKPOINTS", tmp_path / "checkpoints")
    with pytest.raises(SystemExit):
        parse_args([])
    assert "run `make demo` first" in capsys.readouterr().err
    (tmp_path / "checkpoints" / "seg").mkdir(parents=True)
    config, _ = parse_args(["--evidence", "roi"])
    assert config.base == str(tmp_path / "checkpoints" / "system1") and config.evidence == "roi"
    assert (
        config.question_suffix == SHORT_ANSWER_SUFFIX
        and config.answer_max_new_tokens == AGENT_KNOBS["answer_max_new_tokens"]
    )


def test_the_agent_does_not_need_gradio():
    code = "import sys, fast.agent, fast.cli, fast.run, fast.web; assert 'gradio' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=120)
