"""The web app in a real browser: Debian's headless Chromium driven by Playwright, following what a person does
(rank, break it with bad input, train, cancel, pick the result, reload). Screenshots land in artifacts/.

One page and one served app for the whole module; datasets stay tiny (the gallery, a few scenes) so the module
costs a few minutes of CPU."""
import os
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


def text_of(pg, selector):
    return pg.locator(selector).inner_text()


def wait_text(pg, selector, text):
    try:
        pg.wait_for_function(f"(document.querySelector({selector!r})||{{innerText:''}}).innerText.includes({text!r})",
                             timeout=LONG)
    except Exception as err:  # say what the element showed instead
        shown = pg.evaluate(f"(document.querySelector({selector!r})||{{innerText:'(no element)'}}).innerText")
        raise AssertionError(f"{selector} never showed {text!r}; it shows {shown!r}") from err


def set_slider(pg, elem_id, value):
    box = pg.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def set_dropdown(pg, elem_id, value):
    box = pg.locator(f"#{elem_id} input")
    box.click()
    box.fill(value)
    pg.locator("ul[role=listbox] li", has_text=value).first.click()


def dropdown_value(pg, elem_id):
    return pg.locator(f"#{elem_id} input").input_value()


def assert_page_intact(pg):
    """No Error badge anywhere (the leaf reading exactly "Error" that Gradio paints on the outputs of an event
    that raised), no error toast, and the top bar's menus are still menus."""
    where = pg.evaluate("[...document.querySelectorAll('*')].filter(e => !e.children.length && "
                        "e.textContent.trim() === 'Error').map(e => (e.closest('[id]') || {id: '?'}).id)")
    assert not where, f"Error badges on {where}"
    assert pg.locator("[data-testid=toast-body]").count() == 0
    for elem_id in ("encoder", "text", "projector", "tokens"):
        assert pg.locator(f"#{elem_id} input").count() == 1


def rank_gallery_image(pg, index, expected):
    """Picking a gallery image ranks its captions at once."""
    pg.get_by_role("tab", name="Inspect").click()
    pg.locator("#gallery .thumbnail-item").nth(index).click()
    wait_text(pg, "#ranking", expected)


def test_inspect_ranks_and_changes_with_the_image(page, artifacts, tmp_path):
    pg = page
    rank_gallery_image(pg, 3, "tabby cat")  # chelsea, the cat
    pg.wait_for_selector("#heatmap img", timeout=LONG)
    pg.wait_for_function("document.body.innerText.includes('grid of projected tokens')", timeout=LONG)  # words
    first = text_of(pg, "#ranking")
    pg.screenshot(path=str(artifacts / "tab-inspect.png"), full_page=True)
    from PIL import Image
    from skimage import data

    upload = tmp_path / "rocket.png"
    Image.fromarray(data.rocket()).save(upload)
    pg.locator("#image input[type=file]").set_input_files(str(upload))  # ranked at once, the same captions
    pg.wait_for_function(f"(t => t.includes('tabby') && t !== {first!r})(document.querySelector('#ranking')"
                         ".innerText)", timeout=LONG)
    assert_page_intact(pg)


def test_lens_and_layer_selectors_reread_the_words_of_a_scene(page, artifacts):
    """Issue 18: a held-out scene through the scenes connector (SmolLM2 text space), read through the embedding,
    logit and contextual lenses at two LM layers; each choice rewrites the word panel and the page stays whole."""
    pg = page
    pg.get_by_role("tab", name="Inspect").click()
    pg.locator("#scenes-gallery .thumbnail-item").nth(0).click()
    pg.wait_for_function("document.querySelector('#projector input').value.startsWith('scenes')", timeout=LONG)
    pg.wait_for_function("document.body.innerText.includes('projected tokens (no grid)')", timeout=LONG)
    words = {"embedding": text_of(pg, "#words")}
    set_dropdown(pg, "words-lens", "logit")
    pg.wait_for_function("document.body.innerText.includes('logit lens at layer 8')", timeout=LONG)
    words["logit 8"] = text_of(pg, "#words")
    set_slider(pg, "words-layer", 4)
    pg.wait_for_function("document.body.innerText.includes('logit lens at layer 4')", timeout=LONG)
    words["logit 4"] = text_of(pg, "#words")
    set_dropdown(pg, "words-lens", "contextual")
    pg.wait_for_function("document.body.innerText.includes('contextual lens at layer 4')", timeout=LONG)
    words["contextual 4"] = text_of(pg, "#words")
    pg.screenshot(path=str(artifacts / "inspect-lens-contextual.png"), full_page=True)
    # each lens reads the token its own way (the logit lens may say the same at two layers: the note tells them
    # apart, and a layer it had not read before must still come back)
    assert words["embedding"] != words["logit 8"] and words["logit 4"] != words["contextual 4"], words
    assert all("#0:" in w for w in words.values())  # one pooled token, read as words each time
    assert_page_intact(pg)
    set_dropdown(pg, "words-lens", "embedding")  # leave the panel as the next tests expect it
    set_slider(pg, "words-layer", 8)
    rank_gallery_image(pg, 0, "astronaut")  # and back to the photo connector
    pg.wait_for_function("document.querySelector('#projector input').value.startsWith('photo')", timeout=LONG)


def test_bad_images_and_captions_give_one_message_and_the_next_action_works(page, tmp_path):
    from PIL import Image

    pg = page
    (tmp_path / "notes.png").write_text("I am a text file posing as an image")
    Image.new("RGB", (300, 300), (10, 20, 30)).save(tmp_path / "ok.jpg")
    (tmp_path / "cut.jpg").write_bytes((tmp_path / "ok.jpg").read_bytes()[:400])
    Image.new("1", (7100, 7100)).save(tmp_path / "huge.png")  # 50.4 M pixels in a small file
    cases = [("notes.png", "notes.png: not a readable image"), ("cut.jpg", "cut.jpg: image file is damaged"),
             ("huge.png", "huge.png: 7100 x 7100 pixels is too large")]
    for name, expected in cases:
        rank_gallery_image(pg, 0, "astronaut")  # a good result on screen first: it must not survive
        pg.locator("#image input[type=file]").set_input_files(str(tmp_path / name))
        wait_text(pg, "#inspect-msg", expected)
        message = text_of(pg, "#inspect-msg")
        assert "/tmp" not in message and "gradio" not in message
        assert "astronaut" not in text_of(pg, "#ranking") and "astronaut" not in text_of(pg, "#scores")
        assert_page_intact(pg)
    rank_gallery_image(pg, 0, "astronaut")
    pg.locator("#captions textarea").fill("  \n \n")
    pg.click("#rank")
    wait_text(pg, "#inspect-msg", "no captions given")
    assert_page_intact(pg)
    rank_gallery_image(pg, 1, "brick")  # and the next request works
    assert text_of(pg, "#inspect-msg").strip() == ""


def test_map_tab_draws_a_map_with_metrics(page, artifacts):
    pg = page
    pg.get_by_role("tab", name="Map").click()
    assert pg.locator("#pairs input[type=number]").get_attribute("max") == "14"  # the gallery has 14 pairs
    pg.click("#draw-map")
    pg.wait_for_selector("#map-plot .js-plotly-plot", timeout=LONG)
    wait_text(pg, "#map-metrics", "modality_gap")
    assert "i2t_R@1" in text_of(pg, "#map-metrics")
    assert "principal component 1" in text_of(pg, "#map-plot")
    pg.screenshot(path=str(artifacts / "tab-map.png"), full_page=True)


WATCH_MAP = """() => { window.vvMapBusy = [];
  new MutationObserver(() => {
    const status = document.querySelector('#map-status').innerText;
    if (!status.includes('⏳')) return;
    const tracker = document.querySelector('#map-plot .wrap');  // Gradio's progress overlay of the plot
    window.vvMapBusy.push({status, covered: !!tracker && !tracker.classList.contains('hide'),
                           plot: !!document.querySelector('#map-plot .js-plotly-plot')});
  }).observe(document.querySelector('#map-status'), {childList: true, subtree: true, characterData: true});
}"""


def test_map_progress_stays_off_the_plot_and_a_sample_opens_in_inspect(page, artifacts, tmp_path):
    """Scenes never encoded (an empty feature cache) keep the Map busy a while: its one progress line counts them
    in its own place while the previous map stays in view, uncovered. Then one sample of the map, picked from the
    menu, opens in Inspect with its caption and its colour-swapped twin among the candidates."""
    from vlmviz.data import load_dataset

    pg = page
    pg.get_by_role("tab", name="Map").click()
    pg.wait_for_selector("#map-plot .js-plotly-plot", timeout=LONG)  # the gallery map the previous test drew
    set_dropdown(pg, "map-data", "scenes-1obj")
    pg.wait_for_function("document.querySelector('#pairs input[type=number]').max === '300'", timeout=LONG)
    set_slider(pg, "pairs", 120)  # about 5 s of encoding on an idle CPU
    pg.evaluate(WATCH_MAP)
    os.environ["VLMVIZ_FEATURES"] = str(tmp_path / "features")
    try:
        pg.click("#draw-map")
        pg.wait_for_function("window.vvMapBusy.length && document.querySelector('#map-status').innerText"
                             ".includes('Drawn in')", timeout=LONG)  # busy, then drawn
    finally:
        del os.environ["VLMVIZ_FEATURES"]
    busy = pg.evaluate("window.vvMapBusy")
    assert busy and any("encoding new images" in b["status"] for b in busy), busy
    assert not any(b["covered"] for b in busy) and all(b["plot"] for b in busy), busy
    wait_text(pg, "#map-note", "120 projected images")
    sample = load_dataset("scenes-1obj", n=120, seed=0).samples[3]
    set_dropdown(pg, "map-pick", "#3 ")
    pg.screenshot(path=str(artifacts / "map-send.png"), full_page=True)
    pg.click("#map-send")
    wait_text(pg, "#ranking", sample.caption)
    assert pg.get_by_role("tab", name="Inspect").get_attribute("aria-selected") == "true"
    assert sample.meta["swapped"] in text_of(pg, "#ranking")  # the hard negative is among the candidates
    assert dropdown_value(pg, "projector").startswith("scenes")  # the built-in made for scenes
    wait_text(pg, "#fit-note", "synthetic scene of that kind")
    pg.screenshot(path=str(artifacts / "map-sent-to-inspect.png"), full_page=True)
    assert_page_intact(pg)
    pg.get_by_role("tab", name="Map").click()
    pg.locator("#map-pick input").fill("#999")
    pg.locator("#map-pick input").press("Enter")
    pg.click("#map-send")
    wait_text(pg, "#map-send-msg", "sample #999 is not on this map; it has #0 to #119")
    assert_page_intact(pg)
    rank_gallery_image(pg, 0, "astronaut")  # the next action works, back on the photo connector


def test_bad_checkpoints_give_one_message_and_keep_the_top_bar(page, artifacts, tmp_path):
    from PIL import Image

    from vlmviz.checkpoints import save_checkpoint
    from vlmviz.projectors import build_projector

    pg = page
    (tmp_path / "garbage.safetensors").write_bytes(b"\x00\x01 not a tensor file" * 10)
    Image.new("RGB", (32, 32)).save(tmp_path / "photo.jpg")
    (tmp_path / "photo.jpg").rename(tmp_path / "photo.pt")
    wrong = save_checkpoint(tmp_path / "wrong.safetensors", build_projector("linear", 1024, 576), encoder="vit-s14",
                            tokens="cls+mean", text="smollm2-135m", pooling="mean")
    pg.get_by_role("tab", name="Checkpoints").click()
    before = text_of(pg, "#ck-list tbody")
    for path, expected in ((tmp_path / "garbage.safetensors", "garbage.safetensors"),
                           (tmp_path / "photo.pt", "photo.pt: not a readable projector file"), (wrong, "768")):
        clear = pg.locator("#ck-file button[aria-label=Clear], #ck-file button[title=Clear]")
        if clear.count():  # the previous file is still shown: take it away first
            clear.first.click()
        pg.locator("#ck-file input[type=file]").set_input_files(str(path))
        pg.wait_for_timeout(800)
        pg.click("#ck-add")
        pg.wait_for_function(f"(t => t.startsWith('⚠️') && t.includes({expected!r}))"
                             "(document.querySelector('#ck-msg').innerText.trim())", timeout=LONG)
        assert "/tmp" not in text_of(pg, "#ck-msg") and text_of(pg, "#ck-list tbody") == before
        assert_page_intact(pg)
    top = dropdown_value(pg, "encoder")  # the built-in photo connector shows efficientnet-lite0 there
    if top != "vit-s14":  # the wrong-shape message says whose encoder it was checked against
        assert f"names (vit-s14, cls+mean tokens; smollm2-135m), not the top bar's {top}" in text_of(pg, "#ck-msg")
    pg.screenshot(path=str(artifacts / "tab-checkpoints.png"), full_page=True)


def test_cancel_during_encoding_says_so_and_keeps_no_checkpoint(page, tmp_path):
    """Scenes never encoded before (an empty feature cache): Cancel lands while encoding."""
    pg = page
    os.environ["VLMVIZ_FEATURES"] = str(tmp_path / "features")
    try:
        pg.get_by_role("tab", name="Train").click()
        set_dropdown(pg, "train-data", "scenes-1obj")
        set_slider(pg, "n-train", 400)
        pg.click("#start-train")
        wait_text(pg, "#train-status", "Encoding")
        pg.click("#cancel-train")
        wait_text(pg, "#train-status", "Cancelled after 0 of")
    finally:
        del os.environ["VLMVIZ_FEATURES"]
    status = text_of(pg, "#train-status")
    assert "while encoding images" in status and "no checkpoint was saved" in status
    assert pg.locator("#download a").count() == 0
    assert_page_intact(pg)


def test_cancel_during_training_keeps_the_partial_run_selected_and_labelled(page, artifacts):
    from vlmviz.views.session import slug

    pg = page
    pg.get_by_role("tab", name="Train").click()
    # a token-level connector on 256 patch tokens: slow enough per step that Cancel lands mid-run on any machine
    set_dropdown(pg, "family", "resampler")
    set_dropdown(pg, "train-tokens", "patch")
    set_dropdown(pg, "train-data", "gallery")
    set_slider(pg, "steps", 4000)
    set_slider(pg, "n-train", 8)
    pg.click("#start-train")
    wait_text(pg, "#train-status", "s per step")  # the status line counts down what is left
    assert " left" in text_of(pg, "#train-status")
    pg.wait_for_selector("#train-curve .js-plotly-plot", timeout=LONG)
    assert "hide" in pg.locator("#train-curve .wrap").first.get_attribute("class")  # nothing covers the curve
    pg.screenshot(path=str(artifacts / "tab-train-running.png"), full_page=True)
    pg.click("#cancel-train")
    wait_text(pg, "#train-status", "Cancelled after")
    status = text_of(pg, "#train-status")
    assert " of 4000 steps" in status and "partial connector is kept as" in status
    label = dropdown_value(pg, "projector")  # the cancelled run is the chosen connector now
    assert label.startswith("resampler") and "(cancelled)" in label and label in status
    link = pg.locator("#download a").first
    link.wait_for(timeout=LONG)
    with pg.expect_download() as download:
        link.click()
    assert download.value.suggested_filename == f"{slug(label)}.safetensors"  # named like its label
    assert open(download.value.path(), "rb").read(8)
    assert "before" in text_of(pg, "#before-after")
    # the top bar follows the checkpoint: it reads patch tokens, whatever the menu said before
    pg.wait_for_function("document.querySelector('#tokens input').value === 'patch'", timeout=LONG)
    pg.screenshot(path=str(artifacts / "tab-train.png"), full_page=True)
    assert_page_intact(pg)


def test_reload_keeps_the_browsers_checkpoints(page):
    pg = page
    pg.get_by_role("tab", name="Checkpoints").click()
    wait_text(pg, "#ck-list", "(cancelled)")
    before = text_of(pg, "#ck-list tbody")
    pg.reload()
    pg.wait_for_selector("#rank", timeout=LONG)
    pg.get_by_role("tab", name="Checkpoints").click()
    wait_text(pg, "#ck-list", "(cancelled)")
    assert text_of(pg, "#ck-list tbody") == before
    pg.locator("#projector input").click()
    assert pg.locator("ul[role=listbox] li", has_text="(cancelled)").count() == 1
    pg.keyboard.press("Escape")


def test_describe_says_what_it_needs_then_a_caption_trained_connector_describes(page, artifacts):
    """Describe with the untrained connector explains how to get a captioner; a few caption steps in the Train tab
    (resampler, 8 queries, through the real SmolLM2) make one, and Describe then writes a caption."""
    pg = page
    pg.get_by_role("tab", name="Inspect").click()
    set_dropdown(pg, "projector", "untrained linear")
    pg.click("#describe")
    pg.wait_for_function("document.querySelector('#description textarea').value.includes('caption objective')",
                         timeout=LONG)
    pg.get_by_role("tab", name="Train").click()
    set_dropdown(pg, "family", "resampler")
    set_dropdown(pg, "loss", "caption")  # sets pooling none, patch tokens, batch 8, 30 steps
    pg.wait_for_function("document.querySelector('#steps input[type=number]').value === '30'", timeout=LONG)
    set_dropdown(pg, "train-data", "gallery")
    set_slider(pg, "steps", 10)
    set_slider(pg, "n-train", 8)  # the gallery images the previous test encoded: cache hits
    pg.click("#start-train")
    wait_text(pg, "#train-status", "Training: about")  # caption steps are slow: the cost is said before it starts
    wait_text(pg, "#train-status", "Finished")
    assert "caption_loss" in text_of(pg, "#before-after")
    pg.get_by_role("tab", name="Inspect").click()
    assert "caption (prefix)" in dropdown_value(pg, "projector")  # the finished run is selected
    pg.click("#describe")
    pg.wait_for_function("(v => v && !v.includes('caption objective'))"
                         "(document.querySelector('#description textarea').value)", timeout=LONG)
    assert pg.locator("#description textarea").input_value().strip()
    wait_text(pg, "#describe-note", "What helps")  # 10 steps: never shown as a caption without a warning
    assert "⚠️" in text_of(pg, "#describe-note") and "10 training steps" in text_of(pg, "#describe-note")
    pg.screenshot(path=str(artifacts / "tab-inspect-describe.png"), full_page=True)


def test_build_the_describe_captioner_in_the_background_cancel_then_describe_with_it(page, artifacts):
    """The built-in Describe captioner: not built, Describe says so and offers the button; a build shows its stage
    and progress while the page stays usable, Cancel stops it with nothing saved; built again (a small recipe),
    Describe with a connector that was not trained to caption writes through it and says so."""
    import app as vlmviz_app
    from vlmviz.views.background import DescribeBuild

    small = vlmviz_app.DESCRIBE
    big = DescribeBuild({"steps": 400, "n_train": 8, "n_test": 2})  # long enough to cancel mid-training
    for job in (small, big):
        if job.ready():
            job.ready().unlink()
    pg = page
    try:
        vlmviz_app.DESCRIBE = big
        pg.reload()
        pg.wait_for_selector("#rank", timeout=LONG)
        wait_text(pg, "#describe-status", "not built yet")
        set_dropdown(pg, "projector", "untrained linear")
        pg.click("#describe")
        pg.wait_for_function("document.querySelector('#description textarea').value.includes('button below')",
                             timeout=LONG)
        pg.click("#describe-build")
        wait_text(pg, "#describe-status", "in the background: training")  # the timer polls the stage and step
        assert_page_intact(pg)
        pg.click("#describe-cancel")
        wait_text(pg, "#describe-status", "cancelled after")
        assert "nothing saved" in text_of(pg, "#describe-status") and big.ready() is None
        assert pg.locator("#describe-build").is_visible()

        vlmviz_app.DESCRIBE = small
        pg.click("#describe-build")
        wait_text(pg, "#describe-status", "is ready")
        assert "all right in" in text_of(pg, "#describe-status")  # its held-out figure, from its checkpoint
        assert not pg.locator("#describe-build").is_visible()
        pg.click("#describe")
        pg.wait_for_function("document.querySelector('#description textarea').value.includes('Written by the "
                             "built-in Describe captioner')", timeout=LONG)
        said = pg.locator("#description textarea").input_value()
        assert said.split("\n")[0].strip() and "an untrained connector" in said and "synthetic" in said
        pg.screenshot(path=str(artifacts / "tab-inspect-describe-built-in.png"), full_page=True)
        assert_page_intact(pg)
    finally:
        for job in (small, big):
            job.cancel()
            job.wait(120)
            if job.ready():
                job.ready().unlink()
        vlmviz_app.DESCRIBE = small


def test_compare_two_connectors(page, artifacts):
    pg = page
    pg.get_by_role("tab", name="Compare").click()
    pg.click("#compare")
    pg.wait_for_function("document.body.innerText.includes('modality_gap')", timeout=LONG)
    pg.screenshot(path=str(artifacts / "tab-compare.png"), full_page=True)
    assert_page_intact(pg)


def test_search_tab_builds_an_index_finds_photos_and_opens_one_in_inspect(page, artifacts, tmp_path):
    from test_search import _library

    pg = page
    lib = _library(tmp_path / "photos")  # seven gallery photos, a text file posing as a JPEG, a truncated JPEG
    pg.get_by_role("tab", name="Search").click()
    pg.locator("#lib-folder textarea").fill(str(lib))
    pg.locator("#lib-build").click()
    wait_text(pg, "#lib-status", "✅")
    status = text_of(pg, "#lib-status")
    assert "7 images indexed" in status and "Skipped 2 unreadable" in status and "notes.jpg" in status
    assert "photos" in dropdown_value(pg, "lib-index")
    pg.locator("#lib-query textarea").fill("a cup of coffee")
    pg.locator("#lib-go").click()
    pg.wait_for_selector("#lib-hits .thumbnail-item", timeout=LONG)
    wait_text(pg, "#lib-note", "of 7 images")
    assert "coffee.jpg" in pg.locator("#lib-hits .thumbnail-item").first.inner_text()
    pg.screenshot(path=str(artifacts / "tab-search.png"), full_page=True)
    pg.locator("#lib-query textarea").fill('"a horse" - "grass"')
    pg.locator("#lib-query textarea").press("Enter")
    wait_text(pg, "#lib-note", "'grass'")
    assert "horse.jpg" in pg.locator("#lib-hits .thumbnail-item").first.inner_text()
    pg.locator("#lib-hits .thumbnail-item").first.click()  # opens in Inspect, ranked against the queries
    wait_text(pg, "#ranking", "a horse")
    assert "a cup of coffee" in text_of(pg, "#ranking")
    assert pg.get_by_role("tab", name="Inspect").get_attribute("aria-selected") == "true"
    assert dropdown_value(pg, "projector") == "photo concepts (ConSE, ImageNet head)"
    pg.screenshot(path=str(artifacts / "search-to-inspect.png"), full_page=True)
    assert_page_intact(pg)


def test_search_tab_cancel_keeps_what_was_indexed_and_bad_input_gets_one_message(page, artifacts, tmp_path,
                                                                                  monkeypatch):
    import app as vlmviz_app
    from shapes_folder import make_shape_folder

    real_build = vlmviz_app.search_ui.build

    def held_build(folder, connector, progress=None, cancel=None):
        """The real build, held after each batch until Cancel is pressed (a minute at most): on a fast machine
        240 small images are indexed before a person's click would land, and then there is nothing to cancel."""
        def held(done, total, what):
            progress(done, total, what)
            if what == "embedding images":
                cancel.wait(60)
        return real_build(folder, connector, held, cancel)

    monkeypatch.setattr(vlmviz_app.search_ui, "build", held_build)
    pg = page
    lib = make_shape_folder(tmp_path / "shapes", 240, size=64)
    pg.get_by_role("tab", name="Search").click()
    pg.locator("#lib-folder textarea").fill(str(lib))
    pg.locator("#lib-build").click()
    wait_text(pg, "#lib-status", "Embedding images")
    # while it runs the status line counts, uncovered: the progress bar sits on the index menu
    assert "of 240 images" in text_of(pg, "#lib-status")
    covered = pg.evaluate("(() => { const r = document.querySelector('#lib-status').getBoundingClientRect(); "
                          "const e = document.elementFromPoint(r.x + 20, r.y + r.height / 2); "
                          "return !document.querySelector('#lib-status').contains(e); })()")
    pg.screenshot(path=str(artifacts / "search-building.png"))
    assert not covered
    pg.locator("#lib-cancel").click()
    wait_text(pg, "#lib-status", "⏹")
    assert "cancelled after 16 of 240 images" in text_of(pg, "#lib-status")
    monkeypatch.setattr(vlmviz_app.search_ui, "build", real_build)
    pg.locator("#lib-cancel").click()  # nothing runs now: the cancelled build's line stays
    pg.wait_for_timeout(500)
    assert "cancelled after 16 of 240 images" in text_of(pg, "#lib-status")
    pg.locator("#lib-build").click()  # building again goes on from where the cancel stopped
    wait_text(pg, "#lib-status", "✅")
    status = text_of(pg, "#lib-status")
    assert "240 images indexed" in status and " 0 unchanged" not in status
    pg.locator("#lib-folder textarea").fill(str(tmp_path / "no such folder"))
    pg.locator("#lib-build").click()
    wait_text(pg, "#lib-status", "expected a folder of images")
    pg.locator("#lib-query textarea").fill('"a cat" - "a cat"')
    pg.locator("#lib-go").click()
    wait_text(pg, "#lib-note", "cancel out")
    assert_page_intact(pg)
    pg.locator("#lib-query textarea").fill("a red circle")
    pg.locator("#lib-go").click()
    wait_text(pg, "#lib-note", "of 240 images")


def _tiny_qwen2_vl(folder, words):
    """A tiny random Qwen2-VL (tests/test_vlms.py's config) saved with a word-level tokenizer over `words`, so its
    LM table can rank captions as well as name the nearest tokens."""
    import torch
    import transformers as T
    from tokenizers import Tokenizer, models, pre_tokenizers
    from test_vlms import SUPPORTED, config

    torch.manual_seed(0)
    model = getattr(T, SUPPORTED["qwen2_vl"][0])(config("qwen2_vl")).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    model.save_pretrained(folder)
    vocab = ["<unk>", *sorted(words)][:96]  # ids below the tiny LM's 99-row table
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    T.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>").save_pretrained(folder)
    return folder


def test_open_a_real_vlm_rank_read_words_and_see_a_tokens_patches_then_a_bad_folder(page, artifacts, tmp_path):
    """The VLM picker: type a saved VLM's folder, open it, rank a gallery photo through its own tower, connector and
    LM table, read the tokens' nearest words, see which 2 x 2 patches make one token; a folder that is not a VLM
    gets one message beside the picker and the VLM stays open."""
    import transformers as T

    from vlmviz.data import load_gallery

    pg = page
    cat = load_gallery()[3]
    words = {w for c in (cat.caption, *cat.distractors) for w in c.split()}
    folder = _tiny_qwen2_vl(tmp_path / "tiny-qwen2-vl", words)
    pg.get_by_role("tab", name="Inspect").click()
    pg.locator("#vlm-path textarea").fill(str(folder))
    pg.click("#vlm-open")
    wait_text(pg, "#vlm-msg", "Opened")
    assert dropdown_value(pg, "projector") == f"vlm: {folder}"
    wait_text(pg, "#connector-note", "tokens per image")
    note = text_of(pg, "#connector-note")  # 128 px at 4 px patches, Qwen's 2 x 2 merge
    assert "32 x 32 patches" in note and "1024 → 256 tokens, 4x fewer" in note and "Not shown" in note
    assert dropdown_value(pg, "encoder") == "tiny-qwen2-vl vision tower"
    rank_gallery_image(pg, 3, "tabby cat")  # the VLM stays chosen: a gallery pick swaps only built-ins
    assert dropdown_value(pg, "projector") == f"vlm: {folder}"
    wait_text(pg, "#shapes", "qwen2_vl: tiny-qwen2-vl")
    pg.wait_for_function("document.body.innerText.includes('16x16 grid of projected tokens')", timeout=LONG)
    wait_text(pg, "#prov-note", "Token 0 (row 0, column 0 of the 16 x 16 output grid)")
    assert "4 of the 32 x 32 tower patches by qwen2_merger: a 2 x 2 block (rows 0-1, columns 0-1)" in \
        text_of(pg, "#prov-note")
    box = pg.locator("#prov-token input")
    box.fill("17")
    wait_text(pg, "#prov-note", "Token 17 (row 1, column 1")
    assert "(rows 2-3, columns 2-3)" in text_of(pg, "#prov-note")
    picture = pg.locator("#provenance img")
    shown = picture.bounding_box()  # a click just past the picture's centre: row 8, column 8
    picture.click(position={"x": shown["width"] / 2 + 2, "y": shown["height"] / 2 + 2})
    wait_text(pg, "#prov-note", "Token 136 (row 8, column 8")
    assert box.input_value() == "136"
    assert text_of(pg, "#inspect-msg").strip() == "" and "⚠" not in text_of(pg, "#vlm-msg")
    pg.locator("#provenance").scroll_into_view_if_needed()
    pg.screenshot(path=str(artifacts / "tab-inspect-vlm.png"), full_page=True)
    assert_page_intact(pg)
    pg.locator("#vlm-context input").check()  # the same VLM, captions read by its LM: a choice of its own
    pg.click("#vlm-open")
    wait_text(pg, "#vlm-msg", "mean of its last hidden states")
    assert dropdown_value(pg, "projector") == f"vlm (contextual text): {folder}"
    pg.wait_for_function("document.querySelector('#text input').value.includes('contextual')", timeout=LONG)
    wait_text(pg, "#connector-note", "captions are read by the LM")
    wait_text(pg, "#ranking", "tabby cat")
    assert text_of(pg, "#inspect-msg").strip() == ""
    pg.screenshot(path=str(artifacts / "tab-inspect-vlm-contextual.png"), full_page=True)
    pg.locator("#vlm-context input").uncheck()
    pg.click("#vlm-open")
    pg.wait_for_function(f"document.querySelector('#projector input').value === {f'vlm: {folder}'!r}",
                         timeout=LONG)
    assert_page_intact(pg)

    T.CLIPVisionConfig(image_size=32, patch_size=4, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4).save_pretrained(tmp_path / "clip")
    (tmp_path / "empty").mkdir()
    for bad, expected in ((tmp_path / "clip", "'clip_vision_model' model; vlmviz opens llava"),
                          (tmp_path / "empty", "no readable VLM config"),
                          (tmp_path / "nowhere", "nowhere: no such folder")):
        pg.locator("#vlm-path textarea").fill(str(bad))
        pg.click("#vlm-open")
        wait_text(pg, "#vlm-msg", expected)
        message = text_of(pg, "#vlm-msg")
        assert message.count("⚠️") == 1 and "/tmp" not in message
        assert dropdown_value(pg, "projector") == f"vlm: {folder}"  # the open VLM stays chosen
        assert text_of(pg, "#inspect-msg").strip() == ""
        assert_page_intact(pg)
    pg.screenshot(path=str(artifacts / "vlm-bad-folder.png"))
    rank_gallery_image(pg, 1, "brick")  # and the next action works, still through the VLM
    wait_text(pg, "#prov-note", "Token 136")
    set_dropdown(pg, "projector", "untrained linear")  # leaving the VLM gives the top bar back
    pg.wait_for_function("document.querySelector('#encoder input').value === 'vit-s14'", timeout=LONG)
    assert dropdown_value(pg, "text") == "smollm2-135m"
    assert_page_intact(pg)


def test_linked_maps_of_two_connectors_in_the_map_tab(page, artifacts):
    pg = page
    pg.get_by_role("tab", name="Map").click()
    set_dropdown(pg, "map-data", "scenes-1obj")
    pg.locator("#linked-acc").get_by_text("Linked maps at scale").click()
    set_slider(pg, "linked-n", 60)
    set_dropdown(pg, "linked-compare", "scenes (low-rank, ViT-S/14 block 4)")
    # Under pytest after the API tests the slider, just shown by opening its accordion, sometimes reads its initial
    # 2,000 again a moment after the count was typed (not reproduced by hand or in a script; cause not found): the
    # count is typed again until it stays, so the click below draws 60 pairs and the note can say so
    box = pg.locator("#linked-n input[type=number]")
    for _ in range(3):
        pg.wait_for_timeout(1000)
        if box.input_value() == "60":
            break
        set_slider(pg, "linked-n", 60)
    assert box.input_value() == "60", f"the pairs slider reads {box.input_value()!r}, not the 60 typed"
    pg.locator("#draw-linked").click()
    try:
        pg.wait_for_selector("#linked-frame", timeout=LONG)
    except Exception as err:  # say where it stood: the Map tab's status line names the stage
        raise AssertionError(f"no linked maps; status: {text_of(pg, '#map-status')!r}, note: "
                             f"{text_of(pg, '#map-note')!r}") from err
    frame = pg.frame_locator("#linked-frame")
    frame.locator("#vv-map .nsewdrag").first.wait_for(timeout=LONG)
    assert frame.locator("#vv-map .nsewdrag").count() == 2  # two maps side by side
    try:
        wait_text(pg, "#map-note", "60 images")
    except Exception as err:  # say what it drew instead
        raise AssertionError(f"the note does not say 60 images; note: {text_of(pg, '#map-note')!r}, status: "
                             f"{text_of(pg, '#map-status')!r}, slider: "
                             f"{pg.locator('#linked-n input[type=number]').input_value()!r}") from err
    assert "scenes (low-rank" in text_of(pg, "#map-metrics") and "mutual_knn" in text_of(pg, "#map-metrics")
    box = frame.locator("#vv-map .nsewdrag").first.bounding_box()
    frame.locator("#vv-map").evaluate("gd => Plotly.relayout(gd, {dragmode: 'select'})")
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    pg.mouse.move(box["x"] + 5, box["y"] + 5)
    pg.mouse.down()
    pg.mouse.move(cx + box["width"] / 2 - 5, cy + box["height"] / 2 - 5, steps=8)  # nearly the whole left map
    pg.mouse.up()
    frame.locator("#vv-selected b").wait_for(timeout=30_000)
    assert "images selected" in frame.locator("#vv-selected").inner_text()
    pg.screenshot(path=str(artifacts / "tab-map-linked.png"), full_page=True)
    assert_page_intact(pg)
    from vlmviz.data import load_dataset

    last = load_dataset("scenes-1obj", n=60, seed=0).samples[59]  # '#59' as the linked maps' hover numbers it
    set_dropdown(pg, "map-pick", "#59 ")
    pg.click("#map-send")
    wait_text(pg, "#ranking", last.caption)
    assert_page_intact(pg)


def test_train_and_watch_the_held_out_points_move_then_replay_the_steps(page, artifacts):
    pg = page
    pg.get_by_role("tab", name="Train").click()
    set_dropdown(pg, "family", "linear")
    set_dropdown(pg, "loss", "infonce")  # whatever an earlier test left (the caption loss, its small batch)
    set_dropdown(pg, "pooling", "mean")
    set_dropdown(pg, "train-tokens", "cls+mean")
    set_dropdown(pg, "train-data", "scenes-1obj")
    pg.locator("#lr input").fill("0.01")
    set_slider(pg, "batch", 128)
    set_slider(pg, "n-train", 120)
    set_slider(pg, "steps", 200)
    pg.click("#start-train")
    pg.wait_for_selector("#watch-plot .js-plotly-plot", timeout=LONG)  # drawn while it trains
    wait_text(pg, "#train-status", "Finished 200 of 200 steps")
    pg.wait_for_selector("#watch-step input[type=number]", timeout=LONG)
    last = int(pg.locator("#watch-step input[type=number]").input_value())
    assert last >= 2  # step 0 and at least two evaluations were kept
    assert "step 200" in text_of(pg, "#watch-plot")
    set_slider(pg, "watch-step", 0)
    wait_text(pg, "#watch-plot", "step 0:")
    pg.screenshot(path=str(artifacts / "tab-train-watch.png"), full_page=True)
    assert_page_intact(pg)
