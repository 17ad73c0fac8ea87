"""The web app in a real browser: Debian's headless Chromium driven by Playwright clicks through every tab.
Screenshots of each tab land in artifacts/ for people to look at."""
import shutil

import pytest

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--no-first-run", "--disable-sync"]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
LONG = 240_000  # ms; model loading and training on a shared 2-core CPU


@pytest.fixture(scope="module")
def page(app_url):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        pg = browser.new_page(viewport={"width": 1400, "height": 1100}, accept_downloads=True)
        pg.goto(app_url)
        pg.wait_for_selector("#rank", timeout=LONG)
        yield pg
        browser.close()


def ranking_text(pg):
    return pg.locator("#ranking").inner_text()


def close_toasts(pg):
    """Dismiss error messages so they do not cover the buttons the next steps click."""
    for button in pg.locator("[data-testid=toast-close]").all():
        if button.is_visible():
            button.click()
    pg.wait_for_function("!document.querySelector('[data-testid=toast-text]')", timeout=LONG)


def set_slider(pg, elem_id, value):
    box = pg.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def test_inspect_ranks_and_changes_with_the_image(page, artifacts, tmp_path):
    pg = page
    pg.locator("#gallery .thumbnail-item").nth(3).click()  # chelsea, the cat
    pg.wait_for_function("document.querySelector('#captions textarea').value.includes('tabby cat')", timeout=LONG)
    pg.click("#rank")
    pg.wait_for_function("document.querySelector('#ranking').innerText.includes('tabby cat')", timeout=LONG)
    first = ranking_text(pg)
    pg.wait_for_selector("#heatmap img", timeout=LONG)
    pg.wait_for_function("document.querySelector('#words').innerText.includes('grid')||"
                         "document.querySelectorAll('#words td').length > 10", timeout=LONG)
    pg.screenshot(path=str(artifacts / "tab-inspect.png"), full_page=True)
    # upload another image: the same captions are ranked differently
    from PIL import Image
    from skimage import data

    upload = tmp_path / "rocket.png"
    Image.fromarray(data.rocket()).save(upload)
    pg.locator("#image input[type=file]").set_input_files(str(upload))
    pg.wait_for_timeout(1500)
    pg.click("#rank")
    pg.wait_for_function(f"document.querySelector('#ranking').innerText !== {first!r}", timeout=LONG)
    assert ranking_text(pg) != first


def test_bad_image_gives_a_message_and_the_app_keeps_serving(page, tmp_path):
    pg = page
    fake = tmp_path / "notes.png"
    fake.write_text("I am a text file posing as an image")
    pg.locator("#image input[type=file]").set_input_files(str(fake))
    pg.wait_for_timeout(1500)
    pg.click("#rank")
    pg.wait_for_function("document.body.innerText.match(/not a readable image|Invalid file|Error/i)", timeout=LONG)
    close_toasts(pg)
    pg.locator("#gallery .thumbnail-item").nth(0).click()  # the next request works
    pg.wait_for_function("document.querySelector('#captions textarea').value.includes('astronaut')", timeout=LONG)
    pg.click("#rank")
    pg.wait_for_function("document.querySelector('#ranking').innerText.includes('astronaut')", timeout=LONG)
    close_toasts(pg)


def test_map_tab_draws_a_map_with_metrics(page, artifacts):
    pg = page
    pg.get_by_role("tab", name="Map").click()
    pg.click("#draw-map")
    pg.wait_for_selector("#map-plot .js-plotly-plot", timeout=LONG)
    pg.wait_for_function("document.querySelector('#map-metrics').innerText.includes('modality_gap')", timeout=LONG)
    assert "i2t_R@1" in pg.locator("#map-metrics").inner_text()
    pg.screenshot(path=str(artifacts / "tab-map.png"), full_page=True)


def set_dropdown(pg, elem_id, value):
    box = pg.locator(f"#{elem_id} input")
    box.click()
    box.fill(value)
    pg.locator("ul[role=listbox] li", has_text=value).first.click()


def test_train_shows_a_live_curve_cancels_and_downloads(page, artifacts):
    pg = page
    pg.get_by_role("tab", name="Train").click()
    # a token-level connector on 256 patch tokens: slow enough per step that Cancel lands mid-run on any machine
    set_dropdown(pg, "family", "resampler")
    set_dropdown(pg, "train-tokens", "patch")
    set_slider(pg, "steps", 2000)
    set_slider(pg, "n-train", 60)
    pg.click("#start-train")
    pg.wait_for_function("document.querySelector('#train-status').innerText.includes('step')", timeout=LONG)
    pg.wait_for_selector("#train-curve .js-plotly-plot", timeout=LONG)
    pg.screenshot(path=str(artifacts / "tab-train-running.png"), full_page=True)
    pg.click("#cancel-train")
    pg.wait_for_function("document.querySelector('#train-status').innerText.includes('Cancelled')", timeout=LONG)
    link = pg.locator("#download a").first
    link.wait_for(timeout=LONG)
    with pg.expect_download() as download:
        link.click()
    path = download.value.path()
    assert path is not None and open(path, "rb").read(8)  # a real safetensors file came down
    assert "before" in pg.locator("#before-after").inner_text()
    pg.screenshot(path=str(artifacts / "tab-train.png"), full_page=True)


def test_describe_says_what_it_needs_then_a_caption_trained_connector_describes(page, artifacts):
    """Describe with the untrained connector explains how to get a captioner; a few caption steps in the Train tab
    (resampler, 8 queries, through the real SmolLM2) make one, and Describe then writes a caption."""
    pg = page
    pg.get_by_role("tab", name="Inspect").click()
    pg.click("#describe")
    pg.wait_for_function("document.querySelector('#description textarea').value.includes('caption objective')",
                         timeout=LONG)
    pg.get_by_role("tab", name="Train").click()
    set_dropdown(pg, "family", "resampler")
    set_dropdown(pg, "loss", "caption")  # sets pooling none, patch tokens, batch 8, 30 steps
    pg.wait_for_function("document.querySelector('#steps input[type=number]').value === '30'", timeout=LONG)
    set_slider(pg, "steps", 10)
    set_slider(pg, "n-train", 60)  # the scenes the previous test encoded: cache hits
    pg.click("#start-train")
    pg.wait_for_selector("#train-curve .js-plotly-plot", timeout=LONG)
    pg.wait_for_function("document.querySelector('#train-status').innerText.includes('Finished')", timeout=LONG)
    assert "caption_loss" in pg.locator("#before-after").inner_text()
    pg.get_by_role("tab", name="Inspect").click()
    set_dropdown(pg, "projector", "caption (prefix)")
    pg.click("#describe")
    pg.wait_for_function("(v => v && !v.includes('caption objective'))"
                         "(document.querySelector('#description textarea').value)", timeout=LONG)
    assert pg.locator("#description textarea").input_value().strip()
    pg.screenshot(path=str(artifacts / "tab-inspect-describe.png"), full_page=True)


def test_compare_and_checkpoint_upload(page, artifacts, tmp_path):
    pg = page
    pg.get_by_role("tab", name="Compare").click()
    pg.click("#compare")
    pg.wait_for_function("document.body.innerText.includes('modality_gap')", timeout=LONG)
    pg.screenshot(path=str(artifacts / "tab-compare.png"), full_page=True)
    from vlmviz.checkpoints import export_llava
    from vlmviz.projectors import build_projector

    wrong = export_llava(build_projector("mlp2x_gelu", 1024, 4096, hidden_dim=32), tmp_path / "mm_projector.bin")
    pg.get_by_role("tab", name="Checkpoints").click()
    pg.locator("#ck-file input[type=file]").set_input_files(str(wrong))
    pg.wait_for_timeout(1000)
    pg.click("#ck-add")
    pg.wait_for_function("document.body.innerText.includes('expects D_vis=1024')", timeout=LONG)
    pg.screenshot(path=str(artifacts / "tab-checkpoints.png"), full_page=True)
