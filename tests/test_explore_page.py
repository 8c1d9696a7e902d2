"""The explorer's page in a real browser: headless Chromium (the distribution's package) driven by
Selenium through chromium-driver. .ci/run installs both; where they are missing these tests skip,
except under SIMPLE_LLM_REQUIRE_BROWSER=1 (CI), where that is a failure.

The screenshots in docs/EXPLORE.md are taken here (SIMPLE_LLM_SCREENSHOTS=DIR writes them)."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from simple_llm import GPT, AdamW, CharTokenizer, GPTConfig
from simple_llm.explore import Explorer, serve

REQUIRE = os.environ.get("SIMPLE_LLM_REQUIRE_BROWSER", "").strip() not in ("", "0")


def browser_or_skip():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    try:
        from selenium import webdriver
    except ImportError:
        webdriver = None
    if not (chromium and driver and webdriver):
        missing = "selenium" if webdriver is None else ("chromium" if not chromium else "chromedriver")
        if REQUIRE:
            pytest.fail(f"SIMPLE_LLM_REQUIRE_BROWSER is set but {missing} is missing")
        pytest.skip(f"the browser tests need {missing}")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,1800"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=webdriver.ChromeService(executable_path=driver), options=options)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A small trained character model served on a free port: (url, model, tokenizer)."""
    path = tmp_path_factory.mktemp("model")
    text = "the cat sat on the mat. the dog sat on the log. "
    tok = CharTokenizer.train(text)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, n_ctx=48, n_embd=32, n_head=2, n_layer=2), seed=0)
    ids = np.array(tok.encode(text * 2))
    opt = AdamW(model.params, lr=1e-2, weight_decay=0.0)
    for step in range(60):
        starts = np.random.default_rng(step).integers(0, len(ids) - 33, 8)
        window = np.stack([ids[s : s + 33] for s in starts])
        opt.step(model.loss_and_grads(window[:, :-1], window[:, 1:])[1])
    model.save_pretrained(path)
    tok.save(path)
    (path / "log.csv").write_text(
        "step,lr,train_loss,val_loss,tokens_per_s\n0,0.01,3.0,3.1,0\n30,0.01,1.5,,900\n60,0.01,0.9,1.0,900\n"
    )
    httpd = serve(Explorer(model, tok, path), "127.0.0.1", 0)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    host, port = httpd.server_address[:2]
    yield f"http://{host}:{port}", model, tok
    httpd.shutdown()


@pytest.fixture(scope="module")
def browser():
    driver = browser_or_skip()
    yield driver
    driver.quit()


def wait(condition, timeout=20.0):
    """condition()'s first truthy value. An element that the page redrew between being found and being
    read (StaleElementReferenceException) is a moment of redrawing, not an answer: ask again."""
    from selenium.common.exceptions import StaleElementReferenceException

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            value = condition()
        except StaleElementReferenceException:
            value = None
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("the page did not get there in time")


def screenshot(browser, name):
    folder = os.environ.get("SIMPLE_LLM_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(Path(folder) / name))


def api(url, path, body):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url + path, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request) as response:
        return json.loads(response.read())


def test_the_page_end_to_end(site, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    url, _, tok = site
    browser.get(url + "/")
    wait(lambda: "layers" in browser.find_element(By.ID, "model-info").text)
    # it opens with an example prompt, analysed: every panel shows something
    box = browser.find_element(By.ID, "prompt")
    example = api(url, "/api/model", None)["example"]
    assert box.get_attribute("value") == example
    opening = wait(lambda: [int(c.get_attribute("data-id")) for c in browser.find_elements(By.CLASS_NAME, "token")])
    assert opening == tok.encode(example)
    assert wait(lambda: browser.find_elements(By.CSS_SELECTOR, "#attention rect.weight"))
    prompt = "the cat sat on the mat. the cat"
    box.clear()
    box.send_keys(prompt)
    # typing renders the chips: one per token, with the token's id
    chips = wait(lambda: (c := browser.find_elements(By.CLASS_NAME, "token")) and len(c) == len(prompt) and c)
    assert [int(c.get_attribute("data-id")) for c in chips] == tok.encode(prompt)
    # selecting a position renders its candidates with the API's probabilities
    chips[4].click()
    expected = api(url, "/api/analyze", {"prompt": prompt, "top_k": 20, "temperature": 1.0})["positions"][4]["top"]

    def candidates():
        rows = browser.find_elements(By.CLASS_NAME, "candidate")
        got = [(int(r.get_attribute("data-id")), float(r.get_attribute("data-prob"))) for r in rows]
        return got if got and got[0][0] == expected[0]["id"] else None

    got = wait(candidates)
    assert [i for i, _ in got] == [c["id"] for c in expected]
    np.testing.assert_allclose([p for _, p in got], [c["prob"] for c in expected], rtol=1e-9)
    browser.find_element(By.ID, "top-k").clear()
    browser.find_element(By.ID, "top-k").send_keys("3")
    assert wait(lambda: len(browser.find_elements(By.CSS_SELECTOR, ".candidate.filtered")) == len(expected) - 3)

    # changing layer and head redraws the heatmap
    def heatmap():
        return [
            r.get_attribute("data-weight") for r in browser.find_elements(By.CSS_SELECTOR, "#attention rect.weight")
        ]

    first = wait(heatmap)
    assert len(first) == len(prompt) * (len(prompt) + 1) // 2  # the causal half; the rest is masked
    assert len(browser.find_elements(By.CSS_SELECTOR, "#attention rect.masked")) == len(prompt) * (len(prompt) - 1) // 2
    Select(browser.find_element(By.ID, "head")).select_by_value("1")
    second = wait(lambda: (h := heatmap()) != first and h)
    Select(browser.find_element(By.ID, "layer")).select_by_value("1")
    wait(lambda: (h := heatmap()) != second and h)
    assert len(browser.find_elements(By.CSS_SELECTOR, "#heads svg")) == 2
    rows = browser.find_elements(By.CSS_SELECTOR, "#lens tr")
    assert [r.find_elements(By.TAG_NAME, "td")[0].text for r in rows[1:]] == ["embedding", "block 0", "block 1"]
    lens = api(url, "/api/analyze", {"prompt": prompt})["logit_lens"]
    position = int(browser.find_element(By.ID, "position").text.split()[0])  # the chip clicked above
    assert position == 4
    top_texts = [lens[layer][position][0]["id"] for layer in range(3)]
    shown = [r.find_elements(By.TAG_NAME, "td")[1].text for r in rows[1:]]
    assert all(tok.token_text(i).replace(" ", "\u2423") in cell for i, cell in zip(top_texts, shown)), shown
    assert not browser.find_element(By.ID, "training-view").get_attribute("hidden")
    # the training chart has axes with round tick values over the log's steps and losses
    xs = [float(t.text) for t in browser.find_elements(By.CSS_SELECTOR, "#loss-chart text.tick-x")]
    ys = [float(t.text) for t in browser.find_elements(By.CSS_SELECTOR, "#loss-chart text.tick-y")]
    assert xs[0] == 0 and xs[-1] == 60 and len(xs) >= 4 and xs == sorted(xs)
    assert len(ys) >= 3 and 0.9 <= ys[0] < ys[-1] <= 3.1
    titles = [t.text for t in browser.find_elements(By.CSS_SELECTOR, "#loss-chart text.axis-title")]
    assert titles == ["step", "loss (nats)"]
    screenshot(browser, "explore.png")
    # generate streams tokens into the prompt
    browser.find_element(By.ID, "temperature").clear()
    browser.find_element(By.ID, "temperature").send_keys("0")
    max_new = browser.find_element(By.ID, "max-new-tokens")
    max_new.clear()
    max_new.send_keys("12")
    browser.find_element(By.ID, "generate").click()
    wait(lambda: len(browser.find_elements(By.CLASS_NAME, "gen-token")) == 12)
    streamed = [int(e.get_attribute("data-id")) for e in browser.find_elements(By.CLASS_NAME, "gen-token")]
    assert streamed == [t["id"] for t in api(url, "/api/generate", {"prompt": prompt, "max_new_tokens": 12})["tokens"]]
    assert browser.find_element(By.ID, "prompt").get_attribute("value") == prompt + tok.decode(streamed)
    # no console errors, and no request left this machine
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors
    urls = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert urls and all(u.startswith(url) for u in urls), urls
    screenshot(browser, "explore-generated.png")


def test_stop_ends_a_generation(site, browser):
    from selenium.webdriver.common.by import By

    url, _, _ = site
    browser.get(url + "/")
    wait(lambda: "layers" in browser.find_element(By.ID, "model-info").text)
    browser.find_element(By.ID, "prompt").send_keys("the dog")
    wait(lambda: browser.find_elements(By.CLASS_NAME, "token"))
    box = browser.find_element(By.ID, "max-new-tokens")
    box.clear()
    box.send_keys("10000")
    browser.find_element(By.ID, "generate").click()
    wait(lambda: len(browser.find_elements(By.CLASS_NAME, "gen-token")) >= 3)
    browser.find_element(By.ID, "stop").click()
    wait(lambda: browser.find_element(By.ID, "generate").is_enabled())
    count = len(browser.find_elements(By.CLASS_NAME, "gen-token"))
    time.sleep(0.5)
    assert count < 10000 and len(browser.find_elements(By.CLASS_NAME, "gen-token")) == count
