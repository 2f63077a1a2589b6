"""The real front end in headless Chromium (Debian package) loads the pack's extension with no
console errors, and the extension sees the pack's example workflows in the template list."""
from __future__ import annotations

import shutil
import subprocess

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium not installed (scripts/setup.sh "
                                              "installs it when run as root)")
def test_front_end_loads_extension_without_errors(server, tmp_path) -> None:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
           "--no-first-run", "--disable-background-networking", "--disable-component-update",
           "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr",
           "--v=0", "--virtual-time-budget=30000", "--dump-dom", server.url + "/"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    log = proc.stderr
    console = [ln for ln in log.splitlines() if "CONSOLE" in ln]
    assert any("CoralStyleCLIP: live training ready" in ln for ln in console), \
        "extension did not run:\n" + "\n".join(console[-30:])
    ready = next(ln for ln in console if "CoralStyleCLIP: live training ready" in ln)
    for name in ("train_apply_visualise", "apply_saved_edit", "invert_photo_and_edit",
                 "segments_from_masks"):
        assert name in ready
    bad = [ln for ln in console if "Error loading extension" in ln
           or ("coral" in ln.lower() and ("error" in ln.lower() or "uncaught" in ln.lower()))]
    assert not bad, "\n".join(bad)
