"""Drives the dashboard in a real headless Chromium (Debian's chromium and
chromium-driver) for crates/coordinator/tests/dashboard.rs: reads what the overview and
a workflow's page show, acknowledges an escalation through its form, and saves
screenshots. Exits non-zero, saying what it did not find, on any failure.

usage: drive.py BASE_URL TOKEN ESCALATION_ID WORKFLOW_ID SCREENSHOT_DIR
"""

import json
import os
import sys
import time

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait


def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                "--disable-gpu", "--window-size=1400,1800"):
        options.add_argument(arg)
    service = Service(executable_path=os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver"))
    return webdriver.Chrome(service=service, options=options)


def main():
    base, token, escalation, workflow, shots = sys.argv[1:6]
    os.makedirs(shots, exist_ok=True)
    seen = {}
    d = browser()
    wait = WebDriverWait(d, 20)
    try:
        d.get(base + "/")
        wait.until(ec.presence_of_element_located((By.ID, "escalations")))
        seen["title"] = d.title
        seen["workflows"] = d.find_element(By.ID, "workflows").text
        seen["clocks"] = d.find_element(By.ID, "clocks").text
        seen["emergencies"] = d.find_element(By.ID, "emergencies").text
        seen["agents"] = d.find_element(By.ID, "agents").text
        seen["dead_letters"] = d.find_element(By.ID, "dead-letters").text
        seen["chart_roles"] = [
            p.get_attribute("data-role")
            for p in d.find_elements(By.CSS_SELECTOR, "#compliance svg polyline")
        ]
        row = d.find_element(By.CSS_SELECTOR, f'tr[data-escalation="{escalation}"]')
        seen["escalation_row"] = row.text
        d.save_screenshot(os.path.join(shots, "overview.png"))

        row.find_element(By.NAME, "by").send_keys("alice")
        row.find_element(By.NAME, "token").send_keys(token)
        row.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        notice = wait.until(ec.presence_of_element_located((By.ID, "acknowledged")))
        seen["notice"] = notice.text
        seen["open_after"] = [
            r.get_attribute("data-escalation")
            for r in d.find_elements(By.CSS_SELECTOR, "tr[data-escalation]")
        ]
        d.save_screenshot(os.path.join(shots, "acknowledged.png"))

        d.get(f"{base}/workflows/{workflow}")
        wait.until(ec.presence_of_element_located((By.ID, "timeline")))
        seen["state"] = d.find_element(By.ID, "state").text
        seen["timeline"] = d.find_element(By.ID, "timeline").text
        seen["workflow_clocks"] = d.find_element(By.ID, "clocks").text
        current = d.find_elements(By.CSS_SELECTOR, "svg.diagram g.state.current")
        seen["current_states"] = [c.get_attribute("data-state") for c in current]
        d.save_screenshot(os.path.join(shots, "workflow.png"))
    finally:
        d.quit()
    print(json.dumps(seen))


if __name__ == "__main__":
    main()
