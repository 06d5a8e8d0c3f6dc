"""Headless Chromium (Debian's, driven by selenium) inside a test host's namespace,
where the dashboard listens on loopback. Tests start it with `python -m
netwarden.testing.browser` in the host and send it one JSON command per line; it
answers each with one JSON line:

  {"op": "open", "url": ...}                     load a page
  {"op": "wait_row", "text": ..., "timeout": s}  a connection row holding text: its cells
  {"op": "filter", "text": ...}                  type a filter: the rows shown, and ms taken
  {"op": "wait_prompt", "text": ..., "timeout": s}  an ask prompt's text
  {"op": "answer", "text": ..., "button": "Allow once"}  click a prompt's button
  {"op": "script", "js": ...}                    the value of a script
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from typing import TYPE_CHECKING, Any

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

if TYPE_CHECKING:
    from netwarden.testing.netlab import Host

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# Without the background-networking flags Chromium keeps trying hosts this network
# cannot reach.
FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,900",
)


def start(profile: str) -> WebDriver:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    return webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))


def rows(driver: WebDriver) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = driver.execute_script(
        """return [...document.querySelectorAll('#flows tbody tr')].map(tr => ({
             id: tr.dataset.id, className: tr.className,
             cells: [...tr.children].map(td => td.textContent),
             exact: [...tr.children].map(td => td.title)}));"""
    )
    return found


def until(timeout: float, probe: Any) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = probe()
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def handle(driver: WebDriver, command: dict[str, Any]) -> dict[str, Any]:
    op = command["op"]
    timeout = float(command.get("timeout", 5))
    if op == "open":
        driver.get(command["url"])
        return {"title": driver.title}
    if op == "wait_row":
        started = time.monotonic()
        match = until(timeout, lambda: [r for r in rows(driver) if command["text"] in r["id"]])
        return {"row": match[0] if match else None, "seconds": time.monotonic() - started}
    if op == "filter":
        box = driver.find_element(By.ID, "filter")
        box.clear()
        box.send_keys(command["text"])
        stats = driver.execute_script("return window.nwStats.lastFilterMs")
        return {"rows": rows(driver), "ms": stats}
    if op == "wait_prompt":

        def prompt_text() -> str:
            for node in driver.find_elements(By.CSS_SELECTOR, "#prompts .prompt .what"):
                if command["text"] in node.text:
                    return str(node.text)
            return ""

        return {"prompt": until(timeout, prompt_text)}
    if op == "answer":
        for node in driver.find_elements(By.CSS_SELECTOR, "#prompts .prompt"):
            if command["text"] in node.text:
                for button in node.find_elements(By.TAG_NAME, "button"):
                    if button.text == command["button"]:
                        button.click()
                        return {"clicked": True}
        return {"clicked": False}
    if op == "script":
        return {"value": driver.execute_script(command["js"])}
    raise ValueError(f"unknown op {op!r}")


class BrowserClient:
    """This module run in a test host; calls send it one command and return its answer
    (RuntimeError when the command failed)."""

    def __init__(self, host: Host) -> None:
        self.process = host.popen(
            [sys.executable, "-m", "netwarden.testing.browser"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert self.process.stdout is not None
        if not self.process.stdout.readline():
            raise RuntimeError("chromium did not start (scripts/setup.sh --dev installs it)")

    def __call__(self, op: str, **arguments: Any) -> dict[str, Any]:
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self.process.stdin.write(json.dumps({"op": op, **arguments}) + "\n")
        self.process.stdin.flush()
        answer: dict[str, Any] = json.loads(self.process.stdout.readline())
        if "error" in answer:
            raise RuntimeError(answer["error"])
        return answer

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(timeout=30)


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="nw-chromium-") as profile:
        driver = start(profile)
        try:
            print(json.dumps({"ready": True}), flush=True)
            for line in sys.stdin:
                try:
                    answer = handle(driver, json.loads(line))
                except Exception as exc:  # told to the test, which fails with it
                    answer = {"error": f"{type(exc).__name__}: {exc}"}
                print(json.dumps(answer), flush=True)
        finally:
            driver.quit()


if __name__ == "__main__":
    main()
