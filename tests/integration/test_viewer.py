"""The episode viewer of a tiny-model GRPO run with step-level credit, in a real headless Chromium (Debian's
`chromium` and `chromium-driver`, driven by Selenium; nothing is downloaded): every logged episode listed, filters
that count right, masked and trained tokens drawn differently, a screenshot that is not blank, thousands of
episodes opened in seconds, and the served page picking up an episode appended while it is open.

Without the system chromium these tests skip, unless TOOLGYM_REQUIRE_BROWSER=1 (as in .ci/run) makes that a
failure. TOOLGYM_VIEWER_SCREENSHOT=PATH keeps the screenshot (the README's: rl/view/viewer.png)."""

import io
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from rl.view import write
from rl.view.serve import make_server
from tests.unit.test_view import CALL, MALFORMED, played_eval

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
LENGTH_REWARD = ("def length(prompts, completions, completion_ids, **kwargs):\n"
                 "    return [len(ids) / 100 for ids in completion_ids]\n")


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """One GRPO step of the tiny model, step-level credit on, 4 episodes logged, 2 of them with tokens."""
    folder = tmp_path_factory.mktemp("viewer")
    (folder / "lenrew.py").write_text(LENGTH_REWARD)  # rewards that differ, so advantages do
    result = subprocess.run(
        [sys.executable, str(ROOT / "launch" / "grpo.py"), "--env", "sudoku", "--model", "tiny", "--name", "v",
         "--reward", "lenrew.py:length=1", "--set", f"output_dir={folder}", "--set", "log.wandb=off",
         "--set", "grpo.max_steps=1", "--set", "grpo.per_device_train_batch_size=4",
         "--set", "grpo.gradient_accumulation_steps=1", "--set", "rollout.max_turns=3", "--set", "grpo.save_steps=100",
         "--set", "grpo.step_advantage_weight=1", "--set", "log.sample_episodes=4", "--set", "log.token_episodes=2"],
        capture_output=True, text=True, timeout=600, cwd=folder, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return folder / "v"


def rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "episodes.jsonl").open()]


def test_the_run_logs_turns_rewards_and_capped_token_views(run):
    import yaml

    logged = rows(run)
    assert len(logged) == 4 and [("tokens" in r) for r in logged] == [True, True, False, False]
    weights = list(yaml.safe_load((run / "config.yaml").read_text())["rewards"].values())  # in the rows' order
    for row in logged:
        assert set(row["rewards"]) >= {"solved", "length"} and row["turns"] and row["info"]["stop_reason"]
        scored = [w * v for w, v in zip(weights, row["rewards"].values()) if v is not None]
        assert row["reward"] == pytest.approx(sum(scored))  # the weighted sum the trainer's advantages came from
        assert all(turn["calls"] or turn["errors"] or turn["reply"] for turn in row["turns"])
    for row in logged[:2]:
        spans = row["tokens"]["spans"]
        assert len(row["tokens"]["pieces"]) == spans[-1][1] and {s[2] for s in spans} == {0, 1}
        assert all(s[3] == 0 for s in spans if s[2] == 0)  # env tokens are never trained
        masked = {s[4] for s in spans if s[2] == 0}
        assert masked == {round(row["advantage"], 4)}  # env tokens carry the episode advantage, untouched
    # the first turn of every episode acts in the same state (the reset board): step-level credit moves it
    assert any(s[4] != round(r["advantage"], 4) for r in logged[:2] for s in r["tokens"]["spans"] if s[3])


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not (CHROMIUM and CHROMEDRIVER):
        if os.environ.get("TOOLGYM_REQUIRE_BROWSER") == "1":
            pytest.fail("no chromium/chromedriver on PATH: apt-get install -y chromium chromium-driver")
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install -y chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM  # with both paths given, Selenium fetches nothing
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,900"):
        options.add_argument(arg)
    # chromium's profile and its singleton socket folder go in the test's own scratch, not the machine's /tmp
    scratch = tmp_path_factory.mktemp("chromium")
    options.add_argument(f"--user-data-dir={scratch / 'profile'}")
    service = Service(CHROMEDRIVER, env={**os.environ, "TMPDIR": str(scratch)})
    driver = webdriver.Chrome(options=options, service=service)
    yield driver
    driver.quit()


def wait_for(condition, timeout=10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.05)
    return False


def shown(driver) -> tuple[str, int]:
    return driver.find_element("id", "count").text, len(driver.find_elements("css selector", "tr.episode"))


def test_the_page_lists_filters_and_draws_tokens(run, browser):
    logged = rows(run)
    page, count = write([run])
    browser.get(page.as_uri())
    assert count == len(logged) and shown(browser) == (f"{len(logged)} of {len(logged)} episodes", len(logged))
    solved = sum(bool(r["info"]["solved"]) for r in logged)
    browser.find_element("css selector", "#solved-chips button[data-value=solved]").click()
    assert shown(browser) == (f"{solved} of {len(logged)} episodes", solved)
    browser.find_element("css selector", "#solved-chips button[data-value=all]").click()
    cut = sorted(r["reward"] for r in logged)[len(logged) // 2]
    browser.find_element("id", "reward-min").send_keys(str(cut))
    above = sum(r["reward"] >= cut for r in logged)
    assert 0 < above < len(logged) and shown(browser) == (f"{above} of {len(logged)} episodes", above)
    browser.find_element("id", "reward-min").clear()
    browser.execute_script("document.getElementById('reward-min').dispatchEvent(new Event('input'))")
    assert shown(browser)[1] == len(logged)

    browser.find_element("css selector", "tr.episode").click()  # step 0's first episode: it has tokens
    masked = browser.find_element("css selector", "#detail .tokens .tok.masked")
    trained = browser.find_element("css selector", "#detail .tokens .tok.trained")
    assert masked.get_attribute("data-mask") == "0" and trained.get_attribute("data-trained") == "1"
    look = lambda e: (e.value_of_css_property("background-color"), e.value_of_css_property("color"))
    assert look(masked) != look(trained)
    assert len(browser.find_elements("css selector", "#detail .tokens .tok")) == len(logged[0]["tokens"]["pieces"])

    png = browser.get_screenshot_as_png()
    image = Image.open(io.BytesIO(png)).convert("RGB")
    assert image.size[0] >= 1000 and len(image.getcolors(1 << 24)) > 50  # text and token colours, not one fill
    if os.environ.get("TOOLGYM_VIEWER_SCREENSHOT"):
        Path(os.environ["TOOLGYM_VIEWER_SCREENSHOT"]).write_bytes(png)


def test_an_eval_episode_and_a_compared_seed_open_turn_by_turn(browser, tmp_path, chat, scripted):
    a = played_eval(tmp_path, "SFT", CALL, chat, scripted, transcripts=1)
    b = played_eval(tmp_path, "GRPO", MALFORMED, chat, scripted)
    page, _ = write([a])
    browser.get(page.as_uri())
    assert shown(browser) == ("3 of 3 episodes", 3)
    browser.find_element("css selector", "tr.episode").click()  # seed 10,000,000: written turn by turn
    turns = browser.find_elements("css selector", "#detail .turn")
    assert len(turns) == 2 and all("→ place(" in t.find_element("css selector", ".call").text for t in turns)
    assert turns[0].find_element("css selector", ".reply pre").text  # the env's reply to the call
    browser.find_elements("css selector", "tr.episode")[1].click()  # past eval.transcripts=1: its outcome only
    assert not browser.find_elements("css selector", "#detail .turn") and "Outcome only" in browser.find_element(
        "id", "detail").text
    page, _ = write([a, b])
    browser.get(page.as_uri())
    browser.find_element("css selector", "tr.episode").click()
    sides = browser.find_elements("css selector", "#detail .pair > div")
    assert [s.find_element("tag name", "h3").text for s in sides] == ["SFT", "GRPO"]
    assert len(sides[0].find_elements("css selector", ".turn .call")) == 2  # SFT's transcript of the seed
    assert len(sides[1].find_elements("css selector", ".turn .parse-error")) == 2  # and GRPO's, beside it


def test_thousands_of_episodes_open_in_seconds(run, browser, tmp_path):
    logged = rows(run)
    big = tmp_path / "big"
    big.mkdir()
    with (big / "episodes.jsonl").open("w") as f:
        for step in range(750):
            f.writelines(json.dumps({**r, "step": step}) + "\n" for r in logged)
    page, _ = write([big])
    started = time.monotonic()
    browser.get(page.as_uri())
    assert wait_for(lambda: shown(browser)[0] == "3000 of 3000 episodes")
    seconds = time.monotonic() - started
    assert seconds < 5, f"{page.stat().st_size / 1e6:.0f} MB page took {seconds:.1f} s"
    assert shown(browser)[1] == 200  # the list renders a chunk at a time
    browser.find_element("id", "search").send_keys(str(logged[0]["seed"]))
    assert wait_for(lambda: shown(browser)[0] == "3000 of 3000 episodes")
    browser.find_element("id", "step-min").send_keys("740")
    assert shown(browser) == ("40 of 3000 episodes", 40)


def test_the_served_page_picks_up_new_episodes(run, browser, tmp_path):
    live = tmp_path / "live"
    live.mkdir()
    logged = rows(run)
    (live / "episodes.jsonl").write_text(json.dumps(logged[0]) + "\n")
    server = make_server([live], port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        browser.get(f"http://127.0.0.1:{server.server_address[1]}/")
        assert wait_for(lambda: shown(browser) == ("1 of 1 episodes", 1))
        with (live / "episodes.jsonl").open("a") as f:
            f.write(json.dumps({**logged[1], "step": 1}) + "\n")
        assert wait_for(lambda: shown(browser) == ("2 of 2 episodes", 2))
        assert "live · 2 episodes" in browser.find_element("id", "live").text
    finally:
        server.shutdown()
        server.server_close()
