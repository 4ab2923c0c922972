"""The operator console in a real headless browser, and the verification reports it shows.

The browser is Debian's ``chromium`` driven through Debian's ``chromium-driver`` by Selenium
(``scripts/install_browser.sh`` installs both; nothing is downloaded at test time). One gateway serves
the tiny authors model; the scenario registers a forget set from an uploaded rows file, watches its job's
progress, opens its report, toggles it off and on with the keyboard, tries a prompt and deletes it. A
screenshot of every step is kept under ``test-artifacts/console/`` (printed by the test). Accessibility
basics: every form control has a label, the key field has focus at load, focus moves to what a step
opened, and the table's buttons are reached with Tab and pressed with Enter.

The report tests check the documented JSON fields, that no forgotten text reaches a report, that the
page loads nothing from elsewhere, and that a report altered by hand fails ``lethe report verify``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from support import REPO, assert_openai_error

from lethe.benchmarks.server_harness import ADMIN_KEY, GatewayServer, wait_for_job

ARTIFACTS = REPO / "test-artifacts" / "console"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
# A quick ECO search (the smoke preset's), with the verification figures on.
QUICK_OPTIONS: dict[str, Any] = {
    "eco": {"grid": 3, "search_rows": 12, "rounds": 1, "steps_per_round": 1,
            "candidates": ["rand_noise_first_n:64"], "token_modes": ["all"]},
    "evaluate": False,
}  # fmt: skip
needs_browser = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="needs Debian's chromium and chromium-driver: run scripts/install_browser.sh (as root)",
)


@pytest.fixture(scope="module")
def world() -> dict[str, list[dict[str, Any]]]:
    """Forget and retain rows of the test world (with paraphrased prompts, the reports' held-out phrasings)."""
    from lethe.benchmarks.authors_world import WorldConfig, build_world

    built = build_world(WorldConfig.test())
    return {split: built.rows(split) for split in ("forget", "retain")}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, authors_paths: dict[str, Path]) -> Any:
    """A gateway over the tiny authors model with an admin key."""
    gateway = GatewayServer(tmp_path_factory.mktemp("console") / "registry", env={"LETHE_THREADS": "1"}).start()
    yield gateway
    gateway.stop()


def _ready_set(server: GatewayServer, world: dict[str, list[dict[str, Any]]], name: str | None = None) -> str:
    """A ready forget set of the server: one the browser registered, else one trained here through the API.
    With ``name``, the set of that name (trained here the first time): a test whose figures another test
    would change (a re-measured report) keeps its own."""
    with server.admin() as admin:
        ready = [s for s in admin.get("/admin/forget-sets").json()["data"]
                 if s["state"] == "ready" and (name is None or s["name"] == name)]  # fmt: skip
        if ready:
            return str(ready[0]["id"])
        body = {"name": name or "authors-api", "method": "eco", "forget": world["forget"], "retain": world["retain"],
                "options": QUICK_OPTIONS}  # fmt: skip
        created = admin.post("/admin/forget-sets", json=body).json()
        job = wait_for_job(admin, created["job_id"], ("succeeded", "failed", "cancelled"), timeout=600)
        assert job["state"] == "succeeded", (job, server.log_tail())
        return str(created["id"])


# The browser scenario ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Any:
    """Headless Chromium under Selenium, with the browser's console log kept."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1280,1100", "--force-device-scale-factor=1"):  # fmt: skip
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


class Steps:
    """Screenshots of a scenario, one per step, numbered in order."""

    def __init__(self, driver: Any, folder: Path):
        self.driver = driver
        self.folder = folder
        self.count = 0
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)

    def shot(self, name: str) -> Path:
        """Save the page as it looks now."""
        self.count += 1
        path = self.folder / f"{self.count:02d}-{name}.png"
        assert self.driver.save_screenshot(str(path)), path
        return path


def _wait(condition: Any, timeout: float = 30.0, what: str = "condition") -> Any:
    """Poll ``condition`` until it is truthy; an element not there yet, or re-rendered meanwhile, is looked up
    again."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = condition()
        except (NoSuchElementException, StaleElementReferenceException):
            value = None
        if value:
            return value
        time.sleep(0.1)
    raise TimeoutError(f"timed out waiting for {what}")


def _active_id(driver: Any) -> str:
    return str(driver.execute_script("return document.activeElement ? document.activeElement.id : ''"))


def _unlabelled_controls(driver: Any) -> list[str]:
    """Form controls that no ``<label for>``, ``aria-label`` or ``aria-labelledby`` names."""
    return list(
        driver.execute_script("""
        return [...document.querySelectorAll('input, select, textarea')]
          .filter(el => !(el.labels && el.labels.length) && !el.getAttribute('aria-label')
                        && !el.getAttribute('aria-labelledby'))
          .map(el => el.id || el.name || el.outerHTML);""")
    )


def _tab_to(driver: Any, selector: str, limit: int = 60) -> Any:
    """Press Tab until the element matching ``selector`` has focus (the keyboard reaches it), and return it."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    for _ in range(limit):
        ActionChains(driver).send_keys(Keys.TAB).perform()
        if driver.execute_script(f"return document.activeElement.matches({json.dumps(selector)})"):
            return driver.switch_to.active_element
    raise AssertionError(f"Tab never reached {selector}")


def _row(driver: Any, forget_set_id: str) -> Any:
    from selenium.webdriver.common.by import By

    rows = driver.find_elements(By.CSS_SELECTOR, f'#sets tbody tr[data-id="{forget_set_id}"]')
    return rows[0] if rows else None


@needs_browser
def test_console_scenario_in_a_real_browser(
    server: GatewayServer, browser: Any, world: dict[str, list[dict[str, Any]]], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    steps = Steps(browser, ARTIFACTS)
    with capsys.disabled():
        print(f"\nconsole screenshots: {ARTIFACTS}")
    forget_file, retain_file = tmp_path / "forget.jsonl", tmp_path / "retain.jsonl"
    forget_file.write_text("".join(json.dumps(r) + "\n" for r in world["forget"]))
    retain_file.write_text("".join(json.dumps(r) + "\n" for r in world["retain"]))

    # Other tests' sets would flag the scenario's question too: the console starts from an empty registry.
    with server.admin() as admin:
        for record in admin.get("/admin/forget-sets").json()["data"]:
            assert admin.delete(f"/admin/forget-sets/{record['id']}").status_code == 200
    # 1. The page loads without a key, every control is labelled, and the key field has focus.
    browser.get(f"{server.base_url}/admin/ui")
    browser.execute_script("sessionStorage.clear()")  # the module's browser may hold another test's key
    browser.get(f"{server.base_url}/admin/ui")
    assert browser.title == "Lethe operator console"
    assert _unlabelled_controls(browser) == []
    assert _active_id(browser) == "admin-key"
    steps.shot("sign-in")

    # 2. A wrong key is refused and said so; the right one, typed and sent with Enter, opens the console.
    browser.switch_to.active_element.send_keys("not-the-key" + Keys.ENTER)
    _wait(lambda: "refused" in browser.find_element(By.ID, "status").text, what="the refusal")
    assert browser.find_element(By.ID, "app").is_displayed() is False
    browser.find_element(By.ID, "admin-key").send_keys(ADMIN_KEY + Keys.ENTER)
    _wait(lambda: browser.find_element(By.ID, "app").is_displayed(), what="the console")
    assert _active_id(browser) == "sets-title"
    assert browser.execute_script("return sessionStorage.getItem('lethe.adminKey')") == ADMIN_KEY
    steps.shot("signed-in")

    # 3. Register from uploaded rows files.
    browser.find_element(By.ID, "reg-name").send_keys("authors-console")
    browser.find_element(By.ID, "reg-forget").send_keys(str(forget_file))
    browser.find_element(By.ID, "reg-retain").send_keys(str(retain_file))
    browser.find_element(By.ID, "reg-options").send_keys(json.dumps(QUICK_OPTIONS))
    steps.shot("register-form")
    browser.find_element(By.CSS_SELECTOR, "#register-form button[type=submit]").click()
    status = _wait(lambda: (t := browser.find_element(By.ID, "status").text).startswith("Registered") and t,
                   what="the registration")  # fmt: skip
    forget_set_id = status.split("(")[1].split(")")[0]

    # 4. Watch the job's progress live, until the set is ready.
    seen: list[float] = []
    training_shot = False
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        try:
            row = _row(browser, forget_set_id)
            bars = row.find_elements(By.TAG_NAME, "progress") if row is not None else []
            if bars:
                seen.append(float(bars[0].get_attribute("value")))
                assert bars[0].get_attribute("aria-label") == "Training progress of authors-console"
            if row is not None and row.find_elements(By.CSS_SELECTOR, 'button[data-action="report"]'):
                break
        except StaleElementReferenceException:  # the table re-rendered under us: look again
            continue
        if not training_shot and seen and seen[-1] > 0:
            steps.shot("training")
            training_shot = True
        time.sleep(0.3)
    else:
        raise AssertionError(f"the set did not become ready: {server.log_tail()}")
    assert seen and max(seen) > 0, seen
    assert seen == sorted(seen), seen  # the bar only moves forward
    assert "ready (live)" in _row(browser, forget_set_id).text
    steps.shot("ready")

    # 5. Open the report from the keyboard: Tab reaches its button, Enter opens it, focus goes to its title.
    browser.find_element(By.ID, "sets-title").click()
    _tab_to(browser, f'button[data-action="report"][data-id="{forget_set_id}"]').send_keys(Keys.ENTER)
    _wait(lambda: browser.find_element(By.ID, "report").is_displayed(), what="the report")
    assert _active_id(browser) == "report-title"
    frame = browser.find_element(By.ID, "report-frame")
    _wait(lambda: "Verification report" in (frame.get_attribute("srcdoc") or ""), what="the report page")
    browser.execute_script("arguments[0].scrollIntoView()", browser.find_element(By.ID, "report"))
    steps.shot("report")
    browser.switch_to.frame(frame)
    cards = browser.find_element(By.CLASS_NAME, "cards").text
    assert "scope recall (held-out)" in cards and "leak rate" in cards
    assert browser.find_elements(By.TAG_NAME, "svg"), "the report has its plots"
    browser.switch_to.default_content()
    browser.find_element(By.ID, "report-close").send_keys(Keys.ENTER)
    assert _active_id(browser) != "report-title"

    # 6. Toggle the set off with the keyboard; the table and the API agree; a forgotten question is not flagged.
    question = world["forget"][0]["prompt"]
    browser.find_element(By.ID, "sets-title").click()
    _tab_to(browser, f'button[data-action="toggle"][data-id="{forget_set_id}"]').send_keys(Keys.ENTER)
    _wait(lambda: "disabled" in browser.find_element(By.ID, "status").text, what="the toggle")
    _wait(lambda: _row(browser, forget_set_id).find_elements(By.XPATH, ".//td[6][text()='off']"), what="off")
    with server.admin() as admin:
        assert admin.get(f"/admin/forget-sets/{forget_set_id}").json()["enabled"] is False
    prompt = browser.find_element(By.ID, "try-prompt")
    prompt.send_keys(question)
    browser.find_element(By.CSS_SELECTOR, "#try-form button[type=submit]").click()
    _wait(lambda: browser.find_elements(By.ID, "try-flag"), what="the answer")
    assert browser.find_element(By.ID, "try-flag").text.startswith("Not flagged")
    assert browser.find_element(By.ID, "try-with").text == browser.find_element(By.ID, "try-without").text
    browser.execute_script("arguments[0].scrollIntoView()", browser.find_element(By.ID, "try-title"))
    steps.shot("disabled-and-tried")

    # 7. Toggle it on again: the same question is flagged and answered differently through the set.
    browser.find_element(By.ID, "sets-title").click()
    _tab_to(browser, f'button[data-action="toggle"][data-id="{forget_set_id}"]').send_keys(Keys.ENTER)
    _wait(lambda: _row(browser, forget_set_id).find_elements(By.XPATH, ".//td[6][text()='on']"), what="on")
    browser.find_element(By.CSS_SELECTOR, "#try-form button[type=submit]").click()
    _wait(lambda: browser.find_element(By.ID, "try-flag").text.startswith("Flagged"), what="the flagged answer")
    assert forget_set_id in browser.find_element(By.ID, "try-flag").text
    assert browser.find_element(By.ID, "try-with").text != browser.find_element(By.ID, "try-without").text
    browser.execute_script("arguments[0].scrollIntoView()", browser.find_element(By.ID, "try-title"))
    steps.shot("enabled-and-tried")

    # The page broke no content-security rule and raised no script error on the way.
    problems = [e["message"] for e in browser.get_log("browser")
                if e["level"] == "SEVERE" and "401" not in e["message"]]  # fmt: skip
    assert problems == [], problems
    assert steps.count >= 8


# Reports through the API ----------------------------------------------------------------------------


def test_report_json_has_the_documented_fields_and_no_forgotten_text(server: GatewayServer, world: dict) -> None:
    forget_set_id = _ready_set(server, world, "authors-report")
    with server.admin() as admin:
        report = admin.get(f"/admin/forget-sets/{forget_set_id}/report").json()
        page = admin.get(f"/admin/forget-sets/{forget_set_id}/report.html")
    for key in ("leak_rate", "utility_delta", "model_fingerprint", "created"):
        assert key in report, key
    scope = report["scope"]
    assert scope["recall_heldout"] is not None and scope["fpr_heldout"] is not None
    # measured on held-out data: the rows' paraphrased prompts and the general pool's test split
    assert scope["positives"] == sum(len(r["paraphrased_prompts"]) for r in world["forget"])
    assert scope["recall_heldout"] >= 0.9 and scope["fpr_heldout"] <= 0.05, scope
    assert report["leak"]["heldout"]["rate"] < report["leak"]["heldout"]["base_rate"], report["leak"]
    assert report["model_fingerprint"].startswith("sha256:")
    assert len(report["request"]["summary"]["sha256"]) == 64
    assert report["signature"]["alg"] == "HMAC-SHA256"
    life = report["lifecycle"]
    assert life["registered_by"].startswith("key-") and ADMIN_KEY not in json.dumps(report)
    # no forgotten or retained text anywhere in the report or its page
    rows = world["forget"] + world["retain"]
    texts = [t for r in rows for t in (r["prompt"], r["completion"], *r["paraphrased_prompts"])]
    leaked = [t for t in texts if t in json.dumps(report, ensure_ascii=False) or t in page.text]
    assert leaked == []
    # the page is self-contained and runs nothing
    assert page.headers["content-security-policy"].startswith("default-src 'none'")
    for marker in ("<link", "<img", "src=", "<script src", "@import", "url("):
        assert marker not in page.text, marker
    assert "<svg" in page.text


def test_an_altered_report_fails_lethe_report_verify(server: GatewayServer, world: dict, tmp_path: Path) -> None:
    forget_set_id = _ready_set(server, world)
    with server.admin() as admin:
        raw_json = admin.get(f"/admin/forget-sets/{forget_set_id}/report").content
        raw_page = admin.get(f"/admin/forget-sets/{forget_set_id}/report.html").content

    def verify(name: str, data: bytes, *extra: str) -> subprocess.CompletedProcess[str]:
        path = tmp_path / name
        path.write_bytes(data)
        command = [sys.executable, "-m", "lethe.cli", "report", "verify", str(path), *extra]
        return subprocess.run(command, capture_output=True, text=True, timeout=120)

    registry = ["--registry", str(server.registry)]
    for name, data in (("report.json", raw_json), ("report.html", raw_page)):
        good = verify(name, data, *registry)
        assert good.returncode == 0 and "valid" in good.stdout, good
    # a figure changed by hand (the leak rate, as JSON and as the page shows it)
    report = json.loads(raw_json)
    report["leak_rate"] = 0.0 if report["leak_rate"] else 0.5
    altered = verify("altered.json", json.dumps(report).encode(), *registry)
    assert altered.returncode == 1 and "altered" in altered.stderr, altered
    text = raw_page.decode()
    number = text.index('<div class="v">') + len('<div class="v">')
    changed = (text[:number] + ("9" if text[number] != "9" else "8") + text[number + 1 :]).encode()
    altered_page = verify("altered.html", changed, *registry)
    assert altered_page.returncode == 1 and "altered" in altered_page.stderr, altered_page
    stripped = verify("unsigned.html", raw_page.rsplit(b"<!-- lethe-signature", 1)[0], *registry)
    assert stripped.returncode == 1 and "no Lethe signature" in stripped.stderr
    # the right report under another key is not accepted either
    other_key = tmp_path / "other.key"
    other_key.write_text("11" * 32)
    foreign = verify("report.json", raw_json, "--key-file", str(other_key))
    assert foreign.returncode == 1 and "another key" in foreign.stderr, foreign


def test_report_routes_need_the_admin_key_and_a_ready_set(server: GatewayServer) -> None:
    with httpx.Client(base_url=server.base_url, timeout=30) as anonymous:
        assert_openai_error(anonymous.get("/admin/forget-sets/fs-000000000000/report"), 401)
        assert anonymous.get("/admin/ui").status_code == 200  # the page itself holds nothing private
        assert_openai_error(anonymous.post("/admin/try", json={"prompt": "hi"}), 401)
    with server.admin() as admin:
        assert_openai_error(admin.get("/admin/forget-sets/fs-000000000000/report"), 404)
        assert_openai_error(admin.get("/admin/forget-sets/fs-000000000000/report.html"), 404)
        assert_openai_error(admin.post("/admin/forget-sets/fs-000000000000/report", json={"nope": 1}), 400)
        assert_openai_error(admin.get("/admin/ui/secret.txt"), 404)
        error = assert_openai_error(admin.post("/admin/try", json={"prompt": "word " * 1500}), 400, "prompt")
        assert error["code"] == "context_length_exceeded"


def test_a_rerun_measures_the_operators_heldout_set_with_a_reference(
    server: GatewayServer, world: dict, tiny_retain: Any
) -> None:
    """POST .../report: the operator's prompts give scope and leak, forget quality is measured against the truth
    ratios of the tiny model that never saw the forget people, and the rows' figures the re-run cannot redo
    (the rows are gone) are carried over, said so."""
    from lethe.benchmarks.authors_world import WorldConfig, build_world
    from lethe.training.data import parse_rows
    from lethe.training.metrics import EvalTarget, score_rows, truth_ratios

    forget_set_id = _ready_set(server, world, "authors-rerun")
    heldout = build_world(WorldConfig.test()).rows("heldout")
    forget_rows = parse_rows(world["forget"][:12], "forget")
    reference = truth_ratios(score_rows(EvalTarget(tiny_retain), forget_rows)).tolist()
    positives = [{"prompt": r["paraphrased_prompts"][-1], "kind": "operator paraphrase", "keywords": [r["value"]]}
                 for r in world["forget"][:12]]  # fmt: skip
    negatives = [{"prompt": r["prompt"], "kind": "held-out people", "keywords": [r["value"]]} for r in heldout[:12]]
    body = {"evaluation": {"label": "test set", "positives": positives, "negatives": negatives,
                           "forget_rows": world["forget"][:12], "reference_truth_ratios": reference,
                           "nonmember_rows": heldout[:12]}}  # fmt: skip
    with server.admin() as admin:
        report = admin.post(f"/admin/forget-sets/{forget_set_id}/report", json=body).json()
        assert_openai_error(admin.post(f"/admin/forget-sets/{forget_set_id}/report", json={"seed": "x"}), 400)
        too_long = {"evaluation": {"positives": [{"prompt": "word " * 3000}]}}
        error = assert_openai_error(admin.post(f"/admin/forget-sets/{forget_set_id}/report", json=too_long), 400)
        assert error["param"] == "evaluation" and "word" not in error["message"]
    assert report["measured"]["by"] == "re-run"
    assert report["scope"]["positives"] == 12 and report["scope"]["source"].startswith("test set")
    assert report["scope"]["by_kind"]["held-out people"]["in_scope"] is False
    assert report["leak"]["heldout"]["source"] == "test set"
    privacy = report["privacy"]
    assert privacy["rows"] == 12 and 0.0 <= privacy["forget_quality"] <= 1.0 and 0.0 <= privacy["mia_auc"] <= 1.0
    assert report["earlier"]["recall_heldout"] is not None  # the job's own figures, kept
    assert any(m["name"] == "retain" for m in report["utility"]["measures"])  # carried: the rows are gone
    assert any("Carried over" in note for note in report["notes"])
    assert "rows" not in report["lifecycle"] and report["lifecycle"]["events"][-1]["event"] == "re-verified"


@needs_browser
def test_console_deletes_after_confirmation(server: GatewayServer, browser: Any, world: dict) -> None:
    """Delete asks first; dismissing keeps the set, accepting removes it from the table and the registry."""
    from selenium.webdriver.common.by import By

    forget_set_id = _ready_set(server, world)
    browser.get(f"{server.base_url}/admin/ui")
    browser.execute_script("sessionStorage.setItem('lethe.adminKey', arguments[0])", ADMIN_KEY)
    browser.refresh()
    _wait(lambda: _row(browser, forget_set_id), what="the table")
    delete = f'#sets button[data-action="delete"][data-id="{forget_set_id}"]'
    browser.find_element(By.CSS_SELECTOR, delete).click()
    browser.switch_to.alert.dismiss()
    time.sleep(0.5)
    assert _row(browser, forget_set_id) is not None
    browser.find_element(By.CSS_SELECTOR, delete).click()
    browser.switch_to.alert.accept()
    _wait(lambda: _row(browser, forget_set_id) is None, what="the row to go")
    with server.admin() as admin:
        assert_openai_error(admin.get(f"/admin/forget-sets/{forget_set_id}"), 404)


def test_the_schema_document_names_every_report_field() -> None:
    """docs/verification-report.md documents every field of the report's models (they are the schema)."""
    import re

    from lethe.service import verification_report as report
    from lethe.training import verification as figures

    text = (REPO / "docs" / "verification-report.md").read_text()
    models = (
        report.VerificationReport, report.RequestPart, report.Lifecycle, report.KeyEvent, report.Measurement,
        figures.RequestSummary, figures.ScopeFigures, figures.LeakFigures, figures.RevealLeak, figures.AnswerLeak,
        figures.PrivacyFigures, figures.UtilityFigures, figures.UtilityMeasure, figures.FluencyFigures,
        figures.LatencyFigures, report.ReportRun, figures.EvaluationSet,
    )  # fmt: skip
    missing = [
        f"{model.__name__}.{name}"
        for model in models
        for name in model.model_fields
        if not re.search(rf"`(?:[a-z_]+\.)*{name}(?:\.[a-z_]+)*`", text)
    ]
    assert missing == []
