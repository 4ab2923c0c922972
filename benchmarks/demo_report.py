"""The demo forget set's verification report, measured on the held-out probes, and a picture of the console.

``python -m lethe.benchmarks.demo_report --out docs/reports`` starts ``lethe serve --demo`` (SmolLM2 with the
Harry Potter demo set) on loopback, asks it to re-measure the demo set on the held-out probe files the
service itself cannot read (``benchmarks/probes/heldout``: ``hp_test`` as in-scope prompts, ``near_test`` and
``general_test`` as negatives) through ``POST /admin/forget-sets/demo-harry-potter/report``, and saves the
signed ``demo-harry-potter.json`` and ``.html``. With ``--screenshot PNG`` (needs Selenium and Debian's
chromium) it also saves the console with that report open.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import time
from pathlib import Path
from typing import Any

from lethe.benchmarks.scope_eval import load_heldout
from lethe.benchmarks.server_harness import ADMIN_KEY, GatewayServer

DEMO_ID = "demo-harry-potter"
LABEL = "held-out probes benchmarks/probes/heldout: hp_test (in scope), near_test and general_test (negatives)"


def evaluation_set() -> dict[str, Any]:
    """The held-out probe files as an ``EvaluationSet`` body (near-topic kinds prefixed ``near:``)."""
    positives = load_heldout("hp_test")
    negatives = [{**row, "kind": f"near: {row['kind']}"} for row in load_heldout("near_test")]
    negatives += load_heldout("general_test")
    return {"label": LABEL, "positives": positives, "negatives": negatives}


def console_screenshot(server: GatewayServer, path: Path) -> None:
    """The console with the demo set's report open, as a PNG of at most about 300 KB."""
    from PIL import Image
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    options = webdriver.ChromeOptions()
    options.binary_location = str(shutil.which("chromium") or shutil.which("chromium-browser"))
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,1000",
                     "--force-device-scale-factor=1"):  # fmt: skip
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(str(shutil.which("chromedriver"))), options=options)
    try:
        driver.get(f"{server.base_url}/admin/ui")
        driver.find_element(By.ID, "admin-key").send_keys(ADMIN_KEY + "\n")
        deadline = time.monotonic() + 30
        while not driver.find_elements(By.CSS_SELECTOR, f'button[data-action="report"][data-id="{DEMO_ID}"]'):
            if time.monotonic() > deadline:
                raise TimeoutError("the console did not list the demo set")
            time.sleep(0.2)
        driver.find_element(By.CSS_SELECTOR, f'button[data-action="report"][data-id="{DEMO_ID}"]').click()
        while "Verification report" not in (driver.find_element(By.ID, "report-frame").get_attribute("srcdoc") or ""):
            if time.monotonic() > deadline:
                raise TimeoutError("the report did not open")
            time.sleep(0.2)
        driver.execute_script("window.scrollTo(0, 0)")
        png = driver.get_screenshot_as_png()
    finally:
        driver.quit()
    image = Image.open(io.BytesIO(png)).convert("RGB").quantize(colors=128)
    image.save(path, optimize=True)


def main(argv: list[str] | None = None) -> int:
    """Measure the demo report and save it (and optionally the console's picture)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("docs/reports"))
    parser.add_argument("--screenshot", type=Path, help="save the console with the report open to this PNG")
    parser.add_argument("--work", type=Path, default=Path("runs/demo-report"))
    parser.add_argument("--forget-set", type=Path, help="serve this demo artifact folder instead of --demo's")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    serve = ["--forget-set", str(args.forget_set)] if args.forget_set is not None else ["--demo"]
    server = GatewayServer(args.work / "registry", model="smollm2", args=serve).start(timeout=600)
    try:
        with server.client(ADMIN_KEY, timeout=7200) as admin:
            started = time.perf_counter()
            body = {"evaluation": evaluation_set(), "include_request": True}
            response = admin.post(f"/admin/forget-sets/{DEMO_ID}/report", json=body)
            response.raise_for_status()
            print(f"measured in {time.perf_counter() - started:.0f} s")
            report = admin.get(f"/admin/forget-sets/{DEMO_ID}/report").content
            page = admin.get(f"/admin/forget-sets/{DEMO_ID}/report.html").content
        (args.out / f"{DEMO_ID}.json").write_bytes(report)
        (args.out / f"{DEMO_ID}.html").write_bytes(page)
        if args.screenshot is not None:
            console_screenshot(server, args.screenshot)
    finally:
        server.stop()
    figures = json.loads(report)
    print(json.dumps({k: figures[k] for k in ("leak_rate", "utility_delta")} | {"scope": figures["scope"]}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
