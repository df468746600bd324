"""Every solution notebook in a real browser: JupyterLab runs all cells in headless Chromium, no cell may end in
an error, every widget renders, and moving a widget shows what course_lib computes for the new setting.

Chromium is the system's (Debian's `chromium`, installed by `make setup`), driven by Python Playwright; the
test never downloads a browser. Screenshots of each widget before and after go to build/browser/."""
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from notebook_tools import ROOT

NOTEBOOKS = ["01_when_to_finetune", "02_data_preparation", "03_lora_basics", "04_quantization", "05_sft_rlhf_dpo",
             "06_evaluation"]
SHOTS = ROOT / "build" / "browser"
TOKEN = "course-browser-test"
RUN_ALL_SECONDS = 1500  # the slowest notebook takes about 5 minutes on a shared 2-core machine

pytestmark = pytest.mark.slow


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("Chromium is not installed: run `make setup` as root, or `sudo apt-get install chromium`")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A JupyterLab server over a copy of solutions/ (outputs never touch the repository), and a browser."""
    from playwright.sync_api import sync_playwright

    chromium = _chromium()
    root = tmp_path_factory.mktemp("lab")
    for name in NOTEBOOKS:
        shutil.copy(ROOT / "solutions" / f"{name}.ipynb", root)
    port = _free_port()
    command = [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
               f"--ServerApp.root_dir={root}", f"--IdentityProvider.token={TOKEN}",
               "--LabApp.expose_app_in_browser=True", "--ServerApp.disable_check_xsrf=True"]
    if os.geteuid() == 0:
        command.append("--allow-root")
    log = open(root / "jupyterlab.log", "w")
    server = subprocess.Popen(command, cwd=root, stdout=log, stderr=subprocess.STDOUT,
                              env={**os.environ, "HF_HUB_OFFLINE": "1", "MPLBACKEND": "module://matplotlib_inline.backend_inline"})
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(f"{base}/api/status?token={TOKEN}", timeout=5)
            break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                pytest.fail(f"JupyterLab did not start: {(root / 'jupyterlab.log').read_text()[-2000:]}")
            time.sleep(0.5)
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"])
        try:
            yield browser, base
        finally:
            browser.close()
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
            log.close()


# --- Reading the notebook through JupyterLab's own model ---------------------------------------------------

_PANEL = "window.jupyterapp.shell.currentWidget"
_KERNEL_IDLE = """() => {
  const p = window.jupyterapp && window.jupyterapp.shell && window.jupyterapp.shell.currentWidget;  // still loading?
  return !!(p && p.sessionContext && p.sessionContext.session && p.sessionContext.session.kernel
            && p.sessionContext.session.kernel.connectionStatus === 'connected'
            && p.sessionContext.session.kernel.status === 'idle' && p.content && p.content.model);
}"""
_CELLS = f"""() => {{
  const cells = {_PANEL}.content.model.cells, out = [];
  for (let i = 0; i < cells.length; i++) out.push(cells.get(i).toJSON());
  return out;
}}"""
_FINISHED = f"""() => {{
  const p = {_PANEL}, cells = p.content.model.cells;
  if (p.sessionContext.session.kernel.status !== 'idle') return false;
  for (let i = 0; i < cells.length; i++) {{
    const c = cells.get(i).toJSON();
    if (c.cell_type !== 'code') continue;
    if ((c.outputs || []).some(o => o.output_type === 'error')) return true;   // run-all stops at an error
    if (c.execution_count === null || c.execution_count === undefined) return false;
  }}
  return true;
}}"""


def _open(browser, base, name):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(120_000)
    page.goto(f"{base}/lab/workspaces/browser-{name}-{time.monotonic_ns()}/tree/{name}.ipynb?reset&token={TOKEN}")
    try:
        page.wait_for_function(_KERNEL_IDLE, polling=500, timeout=180_000)
    except Exception:
        page.screenshot(path=str(SHOTS / f"{name}-not-opened.png"), full_page=True)
        raise
    return page


def _run_all(page):
    page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")
    page.wait_for_function(_FINISHED, polling=1000, timeout=RUN_ALL_SECONDS * 1000)
    return page.evaluate(_CELLS)


def _errors(cells):
    return [(i, o.get("ename"), o.get("evalue")) for i, c in enumerate(cells) if c["cell_type"] == "code"
            for o in c.get("outputs", []) if o["output_type"] == "error"]


def _widget_cell(page, cells, marker):
    """The rendered output area of the first code cell whose source contains ``marker``, scrolled into view."""
    index = next(i for i, c in enumerate(cells) if c["cell_type"] == "code" and marker in "".join(c["source"]))
    page.evaluate(f"() => {{ const p = {_PANEL}; p.content.activeCellIndex = {index}; "
                  f"p.content.scrollToItem({index}); }}")
    area = page.locator(".jp-Notebook .jp-Cell").nth(index).locator(".jp-Cell-outputArea")
    area.locator(".jupyter-widgets").first.wait_for(state="visible")
    return index, area


def _set_slider(area, label, value):
    """Type a value into an ipywidgets slider's editable readout, as a learner can."""
    slider = area.locator(".widget-slider", has=area.page.locator(f"label:text-is('{label}')"))
    readout = slider.locator(".widget-readout")
    readout.click()
    readout.press("Control+a")
    readout.type(str(value))
    readout.press("Enter")


def _shot(area, name):
    """Screenshot once every image in the area (a plot) has loaded."""
    for img in area.locator("img").element_handles():
        area.page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=img)
    area.screenshot(path=str(SHOTS / f"{name}.png"))


def _check_widgets_rendered(page):
    broken = page.locator("text=Error displaying widget").count() + page.locator("text=Loading widget...").count()
    assert broken == 0, "a widget did not render"


# --- The notebooks ---------------------------------------------------------------------------------------

def _decision(page, cells):
    from course_lib.decision import recommend
    _, area = _widget_cell(page, cells, "decision_explorer()")
    verdict = area.locator(".widget-html-content").first
    _shot(area, "01_decision_explorer-before")
    _set_slider(area, "examples", 50)
    expected = recommend(50, False, True)
    verdict.locator(f"b:text-is('{expected.approach}')").wait_for()
    assert expected.reason in verdict.inner_text()
    area.locator(".widget-checkbox", has_text="needs fresh or private facts").locator("input").check()
    expected = recommend(50, True, True)
    verdict.locator(f"b:text-is('{expected.approach}')").wait_for()
    assert expected.reason in verdict.inner_text()
    _shot(area, "01_decision_explorer-after")


def _rank(page, cells):
    from transformers import AutoConfig

    from course_lib.data import load_measurement
    from course_lib.memory import TransformerShape, lora_summary
    from course_lib.models import cache_dir
    sweep = load_measurement("lora_sweep.json", announce=False)
    _, area = _widget_cell(page, cells, "lora_rank_explorer(")
    _shot(area, "03_rank_explorer-before")
    shape = TransformerShape.from_config(AutoConfig.from_pretrained(cache_dir()), name="SmolLM2-135M")
    for r in (16, 12):
        _set_slider(area, "rank r", r)
        s = lora_summary(shape, r, 16.0, ("q_proj", "v_proj"))
        table = area.locator(".widget-html-content")
        table.locator(f"text={s['trainable']:,} of {s['total']:,}").wait_for()
        run = {run["r"]: run for run in sweep["sweeps"]["rank"]}.get(r)
        shown = table.inner_text()
        assert f"{s['scaling']:.3g}" in shown and f"{s['llama7b_qlora_gb']:.1f} GB" in shown
        assert (f"validation accuracy {run['validation_accuracy']:.1%}" in shown) if run else ("not measured at this rank" in shown)
    _shot(area, "03_rank_explorer-after")


def _bits(page, cells):
    from course_lib.data import load_measurement
    from course_lib.models import load_default_model
    from course_lib.quant import fake_quantize, quantization_snr_db
    measured = load_measurement("quant_smollm2.json", announce=False)
    _, area = _widget_cell(page, cells, "bitwidth_explorer(")
    _shot(area, "04_bitwidth_explorer-before")
    _set_slider(area, "bits", 8)
    area.locator("select").select_option(label="128")
    model, _ = load_default_model()
    W = model.model.layers[5].mlp.down_proj.weight.detach().cpu().float()
    snr = quantization_snr_db(W, fake_quantize(W, 8, 128))
    text = area.locator(".jp-OutputArea-output pre").last
    text.locator(f"text=SNR {snr:.1f} dB").wait_for()
    shown = text.inner_text()
    assert "8.250 bits/param" in shown
    assert f"{measured['uniform_sweep']['8bit-128']:.2f}" in shown
    area.locator("img").last.wait_for(state="visible")  # the error histogram
    _shot(area, "04_bitwidth_explorer-after")


def _blind(page, cells):
    from course_lib.widgets import BlindComparison
    index, area = _widget_cell(page, cells, "pick = random.Random(0).sample")
    _shot(area, "06_blind_comparison-before")
    for k in range(3):
        area.locator("button", has_text="Left is better").click()
        area.locator(f"text=Pair {k + 2} of 10").wait_for()
    _shot(area, "06_blind_comparison-after")
    direct = BlindComparison(["p"] * 10, ["a"] * 10, ["b"] * 10, seed=0)
    for _ in range(3):
        direct.rate("left")
    r = direct.results()
    page.evaluate(f"() => {{ const p = {_PANEL}; p.content.activeCellIndex = {index + 1}; "
                  "return window.jupyterapp.commands.execute('notebook:run-cell'); }")
    result = page.locator(".jp-Notebook .jp-Cell").nth(index + 1).locator(".jp-OutputArea-output")
    result.locator(f"text=You rated 3 pairs: fine-tuned won {r['wins']}, lost {r['losses']}, tied {r['ties']}.").wait_for()


WIDGETS = {"01_when_to_finetune": _decision, "03_lora_basics": _rank, "04_quantization": _bits,
           "06_evaluation": _blind}


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_in_jupyterlab_and_its_widgets_respond(lab, name):
    browser, base = lab
    page = _open(browser, base, name)
    try:
        cells = _run_all(page)
        assert _errors(cells) == [], f"{name}: cells ended in errors"
        code = [c for c in cells if c["cell_type"] == "code"]
        assert all(c["execution_count"] for c in code), f"{name}: not every cell ran"
        assert "notebook ran in" in json.dumps(code[-1]["outputs"])
        _check_widgets_rendered(page)
        if name in WIDGETS:
            WIDGETS[name](page, cells)
            _check_widgets_rendered(page)
    except Exception:
        page.screenshot(path=str(SHOTS / f"{name}-failure.png"), full_page=True)
        raise
    finally:
        page.close()
