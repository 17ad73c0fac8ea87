"""The app's API through gradio_client, as a script or another service would use it; bad input never kills it.
Handlers answer a bad request with cleared outputs and one message (never a raised error, which would paint every
output component of the page with an "Error" badge)."""
import pytest


@pytest.fixture(scope="module")
def client(app_url):
    from gradio_client import Client

    return Client(app_url, verbose=False)


def test_inspect_ranks_the_true_caption_of_a_gallery_image(client):
    from gradio_client import handle_file

    from vlmviz.data import load_gallery

    item = load_gallery()[3]
    captions = "\n".join([item.caption, *item.distractors])
    label, table, shapes, _, message = client.predict(handle_file(str(item.path)), captions, "vit-s14",
                                                      "smollm2-135m", "untrained linear", "all", 0.07,
                                                      api_name="/inspect")
    assert message == ""
    assert {c["label"] for c in label["confidences"]} == {item.caption, *item.distractors}
    assert shapes["encoder_tokens"] == [257, 384] and shapes["projected_tokens"] == [257, 576]
    assert abs(sum(c["confidence"] for c in label["confidences"]) - 1) < 1e-3
    assert shapes["colliding_captions"].startswith("0 of")


def test_inspect_names_captions_the_text_space_cannot_tell_apart(client):
    """In the SmolLM2 token-mean space (a bag of words) an attribute swap is the same vector: the app says so."""
    from gradio_client import handle_file

    from vlmviz.data import load_gallery

    swap = "a red circle left of a blue square\na blue circle left of a red square\na photo of a cat"
    _, table, shapes, _, _ = client.predict(handle_file(str(load_gallery()[0].path)), swap, "vit-s14", "smollm2-135m",
                                         "untrained linear", "all", 0.07, api_name="/inspect")
    assert shapes["colliding_captions"].startswith("2 of 3")
    marks = {row[1]: row[4] for row in table["data"]}
    assert marks["a photo of a cat"] == ""
    rank = {row[1]: row[0] for row in table["data"]}
    assert marks["a red circle left of a blue square"] == f"#{rank['a blue circle left of a red square']}"


def test_bad_requests_get_messages_and_the_next_one_works(client, tmp_path):
    from gradio_client import handle_file
    from PIL import Image

    from vlmviz.data import load_gallery

    good = handle_file(str(load_gallery()[0].path))
    fake = tmp_path / "fake.png"
    fake.write_text("I am text")
    Image.new("1", (20000, 20000)).save(tmp_path / "huge.png")  # small file, 400 M pixels decoded
    jpeg = tmp_path / "ok.jpg"
    Image.new("RGB", (300, 300), (10, 20, 30)).save(jpeg)
    (tmp_path / "cut.jpg").write_bytes(jpeg.read_bytes()[:400])
    cases = [(handle_file(str(fake)), "a cat", "fake.png: not a readable image"),
             (handle_file(str(tmp_path / "huge.png")), "a cat", "huge.png: image is too large"),
             (handle_file(str(tmp_path / "cut.jpg")), "a cat", "cut.jpg: image file is damaged or truncated"),
             (good, "\n \n", "no captions given"),
             (good, "\n".join(f"caption {i}" for i in range(12000)), "too many")]
    for image, captions, expected in cases:
        label, table, shapes, _, message = client.predict(image, captions, "vit-s14", "smollm2-135m",
                                                          "untrained linear", "all", 0.07, api_name="/inspect")
        assert expected in message, message
        assert not label and not shapes and not any(table["data"])  # nothing stale is left on screen
        assert "/tmp" not in message and "gradio" not in message  # the user's file name, never a server path
    label, *_ = client.predict(good, "an astronaut\na cat", "vit-s14", "smollm2-135m", "untrained linear", "all",
                               0.07, api_name="/inspect")
    assert len(label["confidences"]) == 2


def test_bad_checkpoints_get_one_message_and_keep_the_list(app_url, tmp_path):
    """Garbage .safetensors, a JPEG renamed .pt, a checkpoint of the wrong shape: a message naming the file; the
    checkpoint list and the connector menus stay as they were."""
    from gradio_client import Client, handle_file
    from PIL import Image

    from vlmviz.checkpoints import save_checkpoint
    from vlmviz.projectors import build_projector

    client = Client(app_url, verbose=False)
    good = save_checkpoint(tmp_path / "good.safetensors", build_projector("linear", 768, 576), encoder="vit-s14",
                           tokens="cls+mean", text="smollm2-135m", pooling="mean")
    message, _, _, _, rows = client.predict(handle_file(str(good)), "vit-s14", "smollm2-135m", "patch",
                                            api_name="/upload")
    assert "Added as **uploaded good**" in message and [r[0] for r in rows["data"]] == ["uploaded good"]
    (tmp_path / "garbage.safetensors").write_bytes(b"\x00\x01 not a tensor file" * 10)
    Image.new("RGB", (32, 32)).save(tmp_path / "photo.jpg")
    (tmp_path / "photo.jpg").rename(tmp_path / "photo.pt")
    wrong = save_checkpoint(tmp_path / "wrong.safetensors", build_projector("linear", 1024, 576), encoder="vit-s14",
                            tokens="cls+mean", text="smollm2-135m", pooling="mean")
    for path, expected in ((tmp_path / "garbage.safetensors", "garbage.safetensors"),
                           (tmp_path / "photo.pt", "photo.pt: not a readable projector file"),
                           (wrong, "768")):
        message, _, _, _, rows = client.predict(handle_file(str(path)), "vit-s14", "smollm2-135m", "patch",
                                                api_name="/upload")
        assert message.startswith("⚠️") and expected in message, message
        assert "/tmp" not in message
        assert [r[0] for r in rows["data"]] == ["uploaded good"]


def test_two_users_keep_separate_checkpoints(app_url, tmp_path):
    """User A uploads a checkpoint and inspects with it; user B, in its own session, cannot see or use it."""
    from gradio_client import Client, handle_file

    from vlmviz.checkpoints import save_checkpoint
    from vlmviz.data import load_gallery
    from vlmviz.projectors import build_projector

    ck = save_checkpoint(tmp_path / "mine.safetensors", build_projector("linear", 768, 576), encoder="vit-s14",
                         tokens="cls+mean", text="smollm2-135m", pooling="mean")
    a, b = Client(app_url, verbose=False), Client(app_url, verbose=False)
    message, *_ = a.predict(handle_file(str(ck)), "vit-s14", "smollm2-135m", "patch", api_name="/upload")
    assert "for vit-s14" in message and "uploaded mine" in message
    image = handle_file(str(load_gallery()[0].path))
    args = (image, "an astronaut\na cat", "vit-s14", "smollm2-135m", "uploaded mine", "all", 0.07)
    label, _, shapes, _, _ = a.predict(*args, api_name="/inspect")
    assert shapes["projector"] == "uploaded-mine" and shapes["token_selection"] == "cls+mean"
    *_, message = b.predict(*args, api_name="/inspect")  # not among B's checkpoints
    assert "unknown projector 'uploaded mine'" in message


def test_a_slow_umap_does_not_block_inspecting(app_url):
    from gradio_client import Client, handle_file

    from vlmviz.data import load_gallery

    mapper, inspector = Client(app_url, verbose=False), Client(app_url, verbose=False)
    job = mapper.submit("gallery", 14, "UMAP", False, "vit-s14", "smollm2-135m", "untrained linear", "all",
                        api_name="/make_map")
    label, *_ = inspector.predict(handle_file(str(load_gallery()[1].path)), "a brick wall\na cat", "vit-s14",
                                  "smollm2-135m", "untrained linear", "all", 0.07, api_name="/inspect")
    assert len(label["confidences"]) == 2
    assert not job.done()  # inspect answered while the UMAP map (numba JIT, first fit) was still running
    fig, metrics, note, status, *_ = job.result(timeout=600)
    assert status.startswith("Drawn in")
    assert "UMAP" in note and any(row[0] == "modality_gap" for row in metrics["data"])


def test_describe_needs_a_caption_connector_then_describes(app_url, tmp_path):
    """Untrained or retrieval-trained connectors get the how-to; an uploaded caption checkpoint describes, greedy
    decoding is repeatable, a bad image gets a message."""
    import torch
    from gradio_client import Client, handle_file

    from vlmviz.caption.captioner import build_vlm, save_captioner
    from vlmviz.checkpoints import save_checkpoint
    from vlmviz.data import load_gallery
    from vlmviz.projectors import build_projector

    client = Client(app_url, verbose=False)
    image = handle_file(str(load_gallery()[0].path))
    message, note = client.predict(image, "untrained linear", "greedy", api_name="/describe")
    assert not message.startswith("⚠️") and note == ""
    assert "untrained connector" in message and "caption objective" in message and "--preset caption-stage1" in message
    retrieval = save_checkpoint(tmp_path / "ret.safetensors", build_projector("linear", 768, 576), encoder="vit-s14",
                                tokens="cls+mean", text="smollm2-135m", pooling="mean", loss="infonce")
    client.predict(handle_file(str(retrieval)), "vit-s14", "smollm2-135m", "patch", api_name="/upload")
    assert "not trained to caption" in client.predict(image, "uploaded ret", "greedy", api_name="/describe")[0]

    vlm = build_vlm("smollm2-135m")
    try:
        torch.manual_seed(0)  # a reproducible untrained connector
        cap = save_captioner(tmp_path / "cap.safetensors", build_projector("resampler", 384, 576, num_queries=8), vlm,
                             "smollm2-135m", encoder="vit-s14", tokens="patch", text="smollm2-135m")
    finally:
        vlm.close()
    message, *_ = client.predict(handle_file(str(cap)), "vit-s14", "smollm2-135m", "patch", api_name="/upload")
    assert "uploaded cap" in message
    greedy, note = client.predict(image, "uploaded cap", "greedy", api_name="/describe")
    assert isinstance(greedy, str) and greedy.strip() and "caption objective" not in greedy
    assert "no recorded step count" in note and "What helps" in note  # an untrained captioner: said beside it
    assert client.predict(image, "uploaded cap", "greedy", api_name="/describe")[0] == greedy
    sampled, _ = client.predict(image, "uploaded cap", "sampled", api_name="/describe")
    assert isinstance(sampled, str) and sampled.strip()
    fake = tmp_path / "fake.png"
    fake.write_text("I am text")
    message, note = client.predict(handle_file(str(fake)), "uploaded cap", "greedy", api_name="/describe")
    assert note == "" and message.startswith("⚠️") and "fake.png: not a readable image" in message


def test_two_runs_get_unique_labels_files_named_like_them_and_the_new_one_selected(client):
    """Same settings twice: two checkpoints, '(2)' on the second label; the download is named after the label;
    the finished run is the one the Connector menu now shows."""
    import os

    from vlmviz.views.session import slug

    import app

    args = (app.DEFAULT_RECIPE, "linear", "infonce", "mean", "cls+mean", 20, 0.01, 8, 0.5, "gallery", 8, "prefix",
            "vit-s14", "smollm2-135m")
    labels = []
    for _ in range(2):
        curve, table, status, path, menu, watch, replay = client.predict(*args, api_name="/train")
        selected = menu["value"]
        assert status.startswith("Finished 20 of 20 steps") and f"selected as **{selected}**" in status
        assert os.path.basename(path) == f"{slug(selected)}.safetensors"
        assert any(row[0] == "i2t_R@1" for row in table["data"])
        assert watch is not None  # train and watch: the held-out points at the last saved step
        labels.append(selected)
    assert labels[1] == f"{labels[0]} (2)"
