"""Opening a real VLM: for every supported family a tiny random model built from that family's own transformers
config (image 32 px, width 32 / 48, 2 layers, as transformers' testers build them) is saved with save_pretrained,
opened by vlmviz, and vlmviz's projected tokens must equal the model's own get_image_features within 1e-5."""
import numpy as np
import pytest
import torch
import transformers as T
from PIL import Image

from vlmviz.vlms import REFUSED, SUPPORTED, VLMError, open_vlm

V = dict(image_size=32, patch_size=4, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
L = dict(vocab_size=99, hidden_size=48, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
         num_key_value_heads=2)
QWEN_TEXT = dict(**L, rope_parameters={"rope_type": "default", "mrope_section": [2, 2, 2], "rope_theta": 10000.0})
QWEN_IDS = dict(image_token_id=98, video_token_id=97, vision_start_token_id=96)
SIDE = 32  # the square image side every tiny tower sees


def config(kind):
    if kind == "llava":  # two layers concatenated, CLS kept
        return T.LlavaConfig(vision_config=T.CLIPVisionConfig(**V), text_config=T.LlamaConfig(**L),
                             vision_feature_layer=[-3, -1], vision_feature_select_strategy="full", image_token_id=98)
    if kind == "llava_next":  # one layer, CLS dropped (transformers cannot pack anyres tiles with "full")
        return T.LlavaNextConfig(vision_config=T.CLIPVisionConfig(**V), text_config=T.LlamaConfig(**L),
                                 vision_feature_layer=-2, vision_feature_select_strategy="default",
                                 image_grid_pinpoints=[[32, 32], [32, 64]], image_token_id=98)
    if kind == "qwen2_vl":
        return T.Qwen2VLConfig(vision_config=dict(depth=2, embed_dim=32, hidden_size=48, num_heads=4, patch_size=4,
                                                  spatial_merge_size=2, temporal_patch_size=2, mlp_ratio=2),
                               text_config=QWEN_TEXT, **QWEN_IDS)
    if kind == "qwen2_5_vl":  # window attention in block 0, full in block 1
        return T.Qwen2_5_VLConfig(vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, out_hidden_size=48,
                                                     num_heads=4, patch_size=4, spatial_merge_size=2,
                                                     temporal_patch_size=2, window_size=16, fullatt_block_indexes=[1]),
                                  text_config=QWEN_TEXT, **QWEN_IDS)
    if kind == "internvl":
        return T.InternVLConfig(vision_config=T.InternVLVisionConfig(**{**V, "image_size": [32, 32],
                                                                        "patch_size": [4, 4]}),
                                text_config=T.Qwen2Config(**L), image_token_id=98)
    if kind == "idefics3":
        return T.Idefics3Config(vision_config=T.Idefics3VisionConfig(**V), text_config=T.LlamaConfig(**L),
                                scale_factor=2, image_token_id=98)
    if kind == "paligemma":
        return T.PaliGemmaConfig(vision_config=T.SiglipVisionConfig(**V, projection_dim=48),
                                 text_config=T.GemmaConfig(**L, head_dim=12), image_token_id=98)
    if kind == "gemma3":
        return T.Gemma3Config(vision_config=T.SiglipVisionConfig(**V), text_config=T.Gemma3TextConfig(**L, head_dim=12),
                              mm_tokens_per_image=4, image_token_id=98, boi_token_index=97, eoi_token_index=96)
    if kind == "mistral3":
        return T.Mistral3Config(vision_config=T.PixtralVisionConfig(image_size=32, patch_size=4, hidden_size=32,
                                                                    intermediate_size=64, num_hidden_layers=2,
                                                                    num_attention_heads=4, head_dim=8),
                                text_config=T.MistralConfig(**L, head_dim=12), spatial_merge_size=2,
                                vision_feature_layer=-1, image_token_id=98)
    raise KeyError(kind)


FAMILIES = [k for k in SUPPORTED if k != "smolvlm"]  # smolvlm shares Idefics3's adapter


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """kind -> (model, folder): each tiny model built once, every weight random (Gemma initialises its connector
    to zeros, which would make any comparison pass)."""
    cache = {}

    def get(kind):
        if kind not in cache:
            torch.manual_seed(0)
            model = getattr(T, SUPPORTED[kind][0])(config(kind)).eval()
            with torch.no_grad():
                for p in model.parameters():
                    p.normal_(0, 0.2)
            folder = tmp_path_factory.mktemp(kind)
            model.save_pretrained(folder)
            cache[kind] = model, folder
        return cache[kind]

    return get


def pixels(seed=0, batch=2):
    return torch.randn(batch, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(seed))


def reference(kind, model, px):
    """The model's own image features for normalized pixels (B, 3, S, S), through get_image_features, fed as its
    processor would feed them; (B, M, D_txt)."""
    B = px.shape[0]
    with torch.no_grad():
        if kind == "llava_next":  # base view + one tile; the packed features start with the base view's tokens
            out = model.model.get_image_features(pixel_values=torch.stack([px, px], 1),
                                                 image_sizes=torch.tensor([[SIDE, SIDE]] * B)).pooler_output
            n = (SIDE // 4) ** 2
            return torch.stack([f[:n] for f in out])
        if kind in ("qwen2_vl", "qwen2_5_vl"):  # the processor's own patchify: 4 consecutive patches = a 2 x 2 block
            proc = T.Qwen2VLImageProcessorPil()
            flat = np.concatenate([proc.patchify(img.numpy(), 4, 2, 2)[0] for img in px])
            out = model.model.get_image_features(pixel_values=torch.from_numpy(flat),
                                                 image_grid_thw=torch.tensor([[1, SIDE // 4, SIDE // 4]] * B))
            return torch.stack(out.pooler_output)
        if kind == "idefics3":
            return torch.stack(model.model.get_image_features(pixel_values=px[:, None]).pooler_output)
        if kind == "mistral3":
            out = model.model.get_image_features(pixel_values=px, image_sizes=torch.tensor([[SIDE, SIDE]] * B))
            return torch.stack(out.pooler_output)
        out = model.model.get_image_features(pixel_values=px).pooler_output
        return torch.stack(list(out)) if isinstance(out, (list, tuple)) else out


@pytest.mark.parametrize("kind", FAMILIES)
def test_projected_tokens_equal_the_models_image_features(kind, saved):
    model, folder = saved(kind)
    vlm = open_vlm(folder, image_size=SIDE)
    px = pixels()
    with torch.no_grad():
        ours = vlm.projector(vlm.encoder(px))  # (B, M, D_txt)
    theirs = reference(kind, model, px)
    assert ours.shape == theirs.shape, (kind, ours.shape, theirs.shape)
    assert theirs.abs().max() > 1e-2  # a real signal, not zeros
    torch.testing.assert_close(ours, theirs.float(), atol=1e-5, rtol=1e-5)
    assert vlm.projector.num_output_tokens(vlm.encoder.num_tokens) == ours.shape[1]
    assert torch.equal(vlm.text.table, model.get_input_embeddings().weight.detach())


def test_what_was_opened_says_how(saved):
    _, folder = saved("qwen2_vl")
    vlm = open_vlm(folder, image_size=SIDE)
    s = vlm.summary()
    assert (s["connector"], s["tower_tokens"], s["tokens_per_image"], s["d_vis"], s["d_txt"]) == \
        ("qwen2_merger", 64, 16, 32, 48)
    assert "picks a resolution per image" in s["notes"][0]
    assert vlm.text.nearest_tokens(torch.randn(2, 48), k=2)[0][0][0].startswith("<")  # no tokenizer: token ids
    with pytest.raises(VLMError, match="no tokenizer"):
        vlm.text.encode(["a cat"])
    _, folder = saved("llava_next")
    assert "anyres" in " ".join(open_vlm(folder).notes)


def test_encode_preprocesses_as_the_llava_processor(saved):
    """The whole path from a PIL image: vlmviz's resize / crop / normalisation equals CLIPImageProcessorPil's."""
    _, folder = saved("llava")
    proc = T.CLIPImageProcessorPil(size={"shortest_edge": SIDE}, crop_size={"height": SIDE, "width": SIDE})
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8))
    vlm = open_vlm(folder)
    ours = vlm.encoder.preprocess([img])
    theirs = torch.from_numpy(np.asarray(proc(img)["pixel_values"]))
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)


def test_unsupported_and_bad_sources_are_refused_by_name(tmp_path):
    cfg = T.MllamaConfig()
    cfg.save_pretrained(tmp_path)
    with pytest.raises(VLMError, match="mllama model, which vlmviz cannot open: .*cross-attention"):
        open_vlm(tmp_path)
    T.CLIPVisionConfig(**V).save_pretrained(tmp_path / "clip")
    with pytest.raises(VLMError, match="'clip_vision_model' model; vlmviz opens llava, llava_next, qwen2_vl"):
        open_vlm(tmp_path / "clip")
    with pytest.raises(VLMError, match="neither a local folder nor in the Hugging Face cache"):
        open_vlm(tmp_path / "nothing-here")
    assert "mllama" in REFUSED


def test_pipeline_and_cli_open_a_vlm(saved, tmp_path, capsys):
    from vlmviz import Pipeline
    from vlmviz.__main__ import main

    model, folder = saved("internvl")
    image = tmp_path / "img.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(image)
    pipe = Pipeline.from_vlm(folder)
    projected = pipe.project(pipe.image_tokens(str(image)))  # (1, 16, 48): InternVL's 4x pixel shuffle of 8 x 8
    assert projected.shape == (1, 16, 48) and pipe.output_grid(64) == (4, 4, 0)
    with torch.no_grad():
        px = pipe.encoder.preprocess([Image.open(image)])
        assert torch.allclose(projected, model.model.get_image_features(pixel_values=px).pooler_output, atol=1e-5)
    rows, note = pipe.nearest_words(str(image), k=2)
    assert note == "4x4 grid of projected tokens" and len(rows) == 4
    assert main(["inspect", "--vlm", str(folder), str(image), "--k", "1"]) == 0
    out = capsys.readouterr().out
    assert "internvl" in out and "64 tower tokens (8x8 grid, 32-d) -> internvl" in out and "-> 16 tokens of 48-d" in out
    for argv, message in ((["inspect", "--vlm", str(tmp_path / "missing")], "neither a local folder"),
                          (["inspect"], "inspect needs --vlm PATH"),
                          (["inspect", "--vlm", str(folder), str(tmp_path / "no.png")], "")):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and message in err


def test_readme_vlm_example_runs(saved, monkeypatch):
    """The README's real-VLM snippet, run on a tiny saved model in place of the folder it names."""
    import contextlib
    import io
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    code = next(c for c in re.findall(r"```python\n(.*?)```", (root / "README.md").read_text(), re.S)
                if "from_vlm" in c)
    _, folder = saved("gemma3")
    code = code.replace('"path/to/llava-1.5-7b-hf"', repr(str(folder)))
    monkeypatch.chdir(root)
    scope, out = {}, io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), scope)
    assert "'connector': 'gemma3'" in out.getvalue() and scope["note"] == "2x2 grid of projected tokens"


@pytest.mark.parametrize("kind, token, block", [
    ("qwen2_vl", 5, (slice(0, 2), slice(10, 12))),  # 32 x 32 patches at 128 px, merged 2 x 2: token 5 = row 0, col 5
    ("internvl", 5, (slice(2, 4), slice(2, 4))),  # 8 x 8 pixel-shuffled 2 x 2 into 4 x 4: row 1, col 1
    ("gemma3", 3, (slice(4, 8), slice(4, 8))),  # 8 x 8 average-pooled 4 x 4 into 2 x 2: row 1, col 1
    ("llava", 10, (slice(1, 2), slice(1, 2))),  # CLS kept: token 10 is patch 9, row 1, col 1
])
def test_patch_provenance_is_the_connectors_own_block(kind, token, block, saved):
    """Which source patches feed a projected token, read off the connector's gradient: exactly its merge block."""
    from vlmviz.views.pipeline import Pipeline
    from vlmviz.views.provenance import patch_provenance, token_at

    _, folder = saved(kind)
    pipe = Pipeline.from_vlm(folder)
    image = Image.fromarray(np.random.default_rng(2).integers(0, 255, (40, 40, 3), dtype=np.uint8))
    prov = patch_provenance(pipe, image, token)
    expected = np.zeros_like(prov.weights, dtype=bool)
    expected[block] = True
    assert np.array_equal(prov.weights > 0, expected), (kind, np.argwhere(prov.weights > 0))
    assert abs(prov.weights.sum() + (prov.cls_weight or 0) - 1) < 1e-5 and prov.how == "gradient"
    h, w = prov.out_grid
    x, y = (prov.cell[1] + 0.5) * 448 / w, (prov.cell[0] + 0.5) * 448 / h  # a click on that cell picks it back
    assert token_at(pipe, image, x, y) == token
    if kind == "llava":  # the CLS output token reads the CLS input alone
        assert patch_provenance(pipe, image, 0).cls_weight == pytest.approx(1)
    with pytest.raises(ValueError, match="out of range"):
        patch_provenance(pipe, image, pipe.projector.num_output_tokens(pipe.encoder.num_tokens))


def test_learned_queries_show_their_attention_and_a_click_picks_the_query_there(saved):
    from vlmviz.views.pipeline import Pipeline
    from vlmviz.projectors import build_projector
    from vlmviz.views.provenance import patch_provenance, token_at

    _, folder = saved("qwen2_vl")
    vlm = Pipeline.from_vlm(folder)
    torch.manual_seed(0)
    pipe = Pipeline(vlm.encoder, vlm.text, build_projector("resampler", 32, 48, num_queries=4, num_heads=4).eval())
    image = Image.new("RGB", (64, 64), (200, 30, 30))
    prov = patch_provenance(pipe, image, 2)
    assert prov.how == "attention" and prov.cell is None and "learned query 2" in prov.note
    assert (prov.weights > 0).all() and abs(prov.weights.sum() - 1) < 1e-5
    picked = token_at(pipe, image, 10, 10)
    assert picked in range(4) and patch_provenance(pipe, image, picked).weights[0, 0] >= max(
        patch_provenance(pipe, image, q).weights[0, 0] for q in range(4)) - 1e-7


def test_app_picker_lists_cached_vlms_and_says_what_is_wrong(saved, tmp_path):
    from vlmviz.views import vlm_view

    for repo, kind in (("org--tiny-qwen", "qwen2_vl"), ("org--clip", "clip_vision_model"), ("org--gone", None)):
        snap = tmp_path / "hub" / f"models--{repo}" / "snapshots" / "abc123"
        snap.mkdir(parents=True)
        (snap.parents[1] / "refs").mkdir()
        (snap.parents[1] / "refs" / "main").write_text("abc123")
        if kind:
            (snap / "config.json").write_text(f'{{"model_type": "{kind}"}}')
    assert vlm_view.cached_vlms(tmp_path / "hub") == [("org/tiny-qwen (qwen2_vl)", "org/tiny-qwen")]
    assert vlm_view.cached_vlms(tmp_path / "nothing") == []
    _, folder = saved("qwen2_vl")
    choice, pipe = vlm_view.open_choice(str(folder) + "/")
    assert choice == f"vlm: {folder}" and choice in vlm_view.opened() and vlm_view.is_vlm_part(pipe.encoder.name)
    note = vlm_view.composition(pipe)
    assert "32 x 32 patches at 128 px = 1024 tokens" in note and "1024 → 256 tokens, 4x fewer" in note
    assert "picks a resolution per image" in note and "not run" in note
    (tmp_path / "weights.bin").write_bytes(b"0")
    for bad, message in (("", "no VLM given"), (str(tmp_path / "weights.bin"), "weights.bin is a file"),
                         (str(tmp_path / "a" / "b"), "b: no such folder")):
        with pytest.raises(ValueError, match=message):
            vlm_view.open_choice(bad)


WORDS = ["<unk>", "a", "red", "blue", "green", "circle", "square", "triangle", "left", "right", "of", "small", "big"]
ORDER = ["a red circle left of a blue square", "a blue circle left of a red square"]  # same words, swapped roles


@pytest.fixture(scope="module")
def with_tokenizer(saved, tmp_path_factory):
    """kind -> (model, folder): the tiny model of `saved` next to a word-level tokenizer, so captions encode."""
    import shutil

    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = T.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>")

    def get(kind):
        model, folder = saved(kind)
        out = tmp_path_factory.mktemp(f"{kind}-tok")
        for f in folder.iterdir():
            shutil.copy(f, out)
        tokenizer.save_pretrained(out)
        return model, out

    return get


@pytest.mark.parametrize("kind", FAMILIES)
def test_contextual_text_space_is_the_vlms_own_lm(kind, with_tokenizer):
    """text="context": each caption's vector is the mean of the LM's last hidden states, equal to the whole VLM run
    on that caption alone (unpadded, text only); word order changes it, where the token-mean space cannot tell."""
    model, folder = with_tokenizer(kind)
    ctx = open_vlm(folder, image_size=SIDE, text="context").text
    captions = ORDER + ["a small green triangle", "big"]
    ours = ctx.encode(captions)  # (4, 48): one padded batch
    head = model.get_output_embeddings()
    for caption, vector in zip(captions, ours):
        ids = torch.tensor([ctx.tokenizer(caption, add_special_tokens=False)["input_ids"]])  # (1, L)
        # PaliGemma's prefix-LM: token type 1 marks text it writes (the suffix), read causally
        suffix = {"token_type_ids": torch.ones_like(ids)} if kind == "paligemma" else {}
        with torch.no_grad():
            out = model(input_ids=ids, output_hidden_states=True, **suffix)
        torch.testing.assert_close(vector, out.hidden_states[-1][0].mean(0), atol=1e-5, rtol=1e-5)
        with torch.no_grad():  # the head is linear: the mean of the model's own next-token logits is head(vector)
            torch.testing.assert_close(head(vector), out.logits[0].mean(0), atol=1e-4, rtol=1e-4)
    embed = open_vlm(folder, image_size=SIDE).text
    assert embed.kind == "token-mean" and ctx.kind == "contextual" and ctx.dim == embed.dim == 48
    bag = embed.encode(ORDER)
    torch.testing.assert_close(bag[0], bag[1])  # a bag of words: the swap is the same vector
    assert embed.collisions(ORDER) == [[0, 1]] and ctx.collisions(ORDER) == []
    assert (ours[0] - ours[1]).norm() > 1e-2 * ours[0].norm()
    words = ctx.nearest_tokens(ours[:1], k=3)[0]  # read through the LM head
    assert len(words) == 3 and all(w in WORDS for w, _ in words)


def test_logit_lens_reads_through_the_vlms_own_lm(with_tokenizer):
    """The contextual space carries the VLM's LM, so the logit lens runs through it: after every decoder layer it is
    the whole VLM's own next-token logits for those input embeddings (no BOS in this tokenizer, so no prefix)."""
    from vlmviz.lenses import LogitLens, lens_for

    model, folder = with_tokenizer("llava")
    ctx = open_vlm(folder, text="context").text
    x = torch.randn(5, 48, generator=torch.Generator().manual_seed(3))  # five projected tokens (M, D_txt)
    lens = LogitLens(ctx.model, ctx.tokenizer, layer=2)  # both decoder layers
    with torch.no_grad():
        theirs = model(inputs_embeds=x[None]).logits[0, :, :len(WORDS)]  # (5, V)
    torch.testing.assert_close(lens.logits(x), theirs, atol=1e-4, rtol=1e-4)
    rows = lens_for(ctx, "logit", 1).read(x, k=2)
    assert len(rows) == 5 and all(len(r) == 2 and set(r) <= set(WORDS) for r in rows)


def test_contextual_text_through_pipeline_and_cli(with_tokenizer, saved, tmp_path, capsys):
    from vlmviz import Pipeline
    from vlmviz.__main__ import main

    _, folder = with_tokenizer("llava")
    pipe = Pipeline.from_vlm(folder, text="context")
    assert pipe.text.kind == "contextual" and pipe.info["vlm"]["text_kind"] == "contextual"
    assert Pipeline.from_vlm(folder).text.kind == "token-mean"
    image = tmp_path / "img.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(image)
    assert main(["inspect", "--vlm", str(folder), "--vlm-text", "ctx", str(image), "--k", "1"]) == 0
    assert "(LM contextual) (contextual)" in capsys.readouterr().out
    with pytest.raises(ValueError, match="text must be one of embed, context, ctx"):
        open_vlm(folder, text="hidden")
    _, bare = saved("gemma3")  # no tokenizer files: the head still reads vectors, captions say what is missing
    ctx = open_vlm(bare, text="context").text
    assert ctx.nearest_tokens(torch.randn(1, 48), k=2)[0][0][0].startswith("<")
    with pytest.raises(VLMError, match="no tokenizer"):
        ctx.encode(["a cat"])


def test_app_opens_a_vlm_with_contextual_captions_as_its_own_choice(with_tokenizer):
    """The app's 'captions through its LM' box: a second Connector choice for the same folder, resolved to the
    contextual text space (word order counts there), with its own note; the embedding-table choice stays as it was."""
    from vlmviz.views import domain, pipeline, vlm_view

    _, folder = with_tokenizer("llava")
    plain, _ = vlm_view.open_choice(str(folder))
    ctx_choice, ctx_pipe = vlm_view.open_choice(str(folder), contextual=True)
    assert plain == f"vlm: {folder}" and ctx_choice == f"vlm (contextual text): {folder}"
    assert vlm_view.is_vlm_choice(ctx_choice) and ctx_choice in vlm_view.opened()
    assert vlm_view.source_of(ctx_choice) == str(folder)  # the choice typed back into the folder box opens it
    resolved = pipeline.resolve_pipeline(ctx_choice, {}, "vit-s14", "minilm-l6", "all")
    assert resolved is ctx_pipe and resolved.text.kind == "contextual"
    assert pipeline.resolve_pipeline(plain, {}, "vit-s14", "minilm-l6", "all").text.kind == "token-mean"
    a, b = resolved.text.encode(ORDER)  # same words, roles swapped: apart in the contextual space only
    assert not torch.allclose(a, b)
    assert "word order counts" in domain.choice_note(ctx_choice, {}, None)
    assert "bag of words" in domain.choice_note(plain, {}, None)
