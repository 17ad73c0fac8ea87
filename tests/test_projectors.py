"""Every registered connector family honours the shape contract, reports its sizes and trains."""
import pytest
import torch

from vlmviz.projectors import build_projector, list_projectors

D_VIS, D_TXT = 32, 48
FAMILIES = [name for name in list_projectors() if name != "identity"] + ["mlp1x_gelu", "mlp3x_gelu"]


def small(name):
    small_opts = {
        "resampler": dict(num_queries=5, num_heads=4),
        "qformer": dict(num_queries=5, hidden_dim=32, num_heads=4),
        "cabstractor": dict(output_side=2, hidden_dim=16),
        "moe": dict(num_experts=3, top_k=2, hidden_dim=16),
        "lowrank": dict(rank=4),
        "conse": dict(num_classes=50, top_k=5),
        "ovis": dict(vocab_size=40),
        "gemma3": dict(pool=2),
    }
    return build_projector(name, D_VIS, D_TXT, **small_opts.get(name, {}))


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("num_tokens", [16, 17, 49])  # square grid, grid + CLS, odd 7x7 grid
def test_shape_contract_and_counts(name, num_tokens):
    torch.manual_seed(0)
    proj = small(name)
    y = proj(torch.randn(3, num_tokens, D_VIS))
    assert y.shape == (3, proj.num_output_tokens(num_tokens), D_TXT)
    assert proj.num_params == sum(p.numel() for p in proj.parameters()) > 0
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("name", FAMILIES)
def test_every_family_learns_a_fixed_target(name):
    """A few Adam steps on one batch must lower the cosine loss: gradients reach every family's parameters."""
    torch.manual_seed(0)
    proj = small(name)
    x = torch.randn(4, 16, D_VIS)
    target = torch.randn(4, D_TXT)
    opt = torch.optim.Adam(proj.parameters(), lr=1e-2)

    def loss_fn():
        pooled = proj(x).mean(1)  # (B, D_txt)
        return (1 - torch.cosine_similarity(pooled, target, dim=-1)).mean() + proj.aux_loss()

    with torch.no_grad():
        start = float(loss_fn())
    for _ in range(30):
        opt.zero_grad()
        loss_fn().backward()
        opt.step()
    assert float(loss_fn()) < start - 0.2


def test_llava_mlp2x_gelu_parameter_count():
    proj = build_projector("mlp2x_gelu", 768, 512, hidden_dim=1024)
    assert proj.num_params == 1_312_256
    assert [n for n, _ in proj.named_parameters()] == [
        "linear_1.weight", "linear_1.bias", "linear_2.weight", "linear_2.bias"]
    # LLaVA's default: hidden width = text width
    assert build_projector("mlp2x_gelu", 1024, 4096).linear_1.out_features == 4096


def test_config_rebuilds_the_same_architecture():
    for name in FAMILIES:
        proj = small(name)
        cfg = proj.config()
        again = build_projector(cfg["family"], cfg["in_dim"], cfg["out_dim"], **cfg["options"])
        assert again.num_params == proj.num_params
        assert again.state_dict().keys() == proj.state_dict().keys()


def test_unknown_name_lists_valid_ones():
    with pytest.raises(ValueError, match="valid names: .*linear.*mlp.*qformer"):
        build_projector("transformer9000", 8, 8)


def test_bad_shapes_say_what_was_expected():
    with pytest.raises(ValueError, match=r"expects tokens of shape \(\.\.\., 32\), got \(2, 5, 31\)"):
        small("linear")(torch.randn(2, 5, 31))
    with pytest.raises(ValueError, match=r"expects tokens of shape \(B, N, 32\), got \(2, 32\)"):
        small("resampler")(torch.randn(2, D_VIS))  # a set-level connector needs a set of tokens
    with pytest.raises(ValueError, match="square grid"):
        small("pixel_shuffle")(torch.randn(2, 7, D_VIS))
    with pytest.raises(ValueError, match="in_dim == out_dim"):
        build_projector("identity", 8, 9)
    with pytest.raises(ValueError, match="fixes depth=2"):
        build_projector("mlp2x_gelu", 8, 8, depth=3)


def test_identity_and_pixel_shuffle_arithmetic():
    x = torch.randn(2, 5, 8)
    assert torch.equal(build_projector("identity", 8, 8)(x), x)
    ps = build_projector("pixel_shuffle", 4, 4, scale=2)
    grid = torch.arange(16.0).reshape(1, 16, 1).expand(1, 16, 4)  # token t carries value t in every channel
    with torch.no_grad():
        ps.linear.weight.zero_()
        ps.linear.weight[0, 0] = 1.0  # picks channel 0 of the top-left token of each 2x2 block
        ps.linear.weight[1, 3] = 1.0  # pixel_unshuffle orders channels c * s^2 + (i * s + j): bottom-right, channel 0
    y = ps(grid)
    assert y.shape == (1, 4, 4)
    assert y[0, :, 0].tolist() == [0.0, 2.0, 8.0, 10.0]
    assert y[0, :, 1].tolist() == [5.0, 7.0, 13.0, 15.0]


def test_moe_routes_top_k_and_balances():
    torch.manual_seed(0)
    moe = build_projector("moe", D_VIS, D_TXT, num_experts=4, top_k=2, hidden_dim=16)
    moe(torch.randn(8, 10, D_VIS))
    usage = moe.expert_usage  # (B, N, E)
    assert usage.shape == (8, 10, 4)
    assert ((usage > 0).sum(-1) == 2).all()  # exactly top_k experts per token
    assert torch.allclose(usage.sum(-1), torch.ones(8, 10))
    assert float(moe.aux_loss()) >= 1.0 - 1e-4  # Switch balance loss is >= 1, equality only when uniform
    # force every token to expert 0: the balance loss must grow towards E
    with torch.no_grad():
        moe.router.weight.zero_()
        moe.router.weight[0] = 10.0
    moe(torch.ones(8, 10, D_VIS))
    assert float(moe.aux_loss()) > 1.5


def test_attnpool_reads_what_a_token_says_wherever_it_is():
    """Positions enter the keys only: a token's value is the same wherever it sits, so moving the one informative
    token elsewhere (with attention forced onto it) gives the same output; with a query per object the slots are
    concatenated into one output token."""
    torch.manual_seed(0)
    proj = build_projector("attnpool", 8, 6, num_queries=2, rank=4)
    assert proj.num_output_tokens(17) == 1 and proj(torch.randn(3, 17, 8)).shape == (3, 1, 6)
    with torch.no_grad():
        proj.pos_embed.normal_()
        proj.key.weight.zero_()
        proj.key.bias.zero_()
        proj.queries.zero_()  # uniform attention: the output is a function of the set of values only
    x = torch.randn(1, 17, 8)
    moved = x[:, torch.randperm(17)]
    assert torch.allclose(proj(x), proj(moved), atol=1e-5)
    with torch.no_grad():
        proj.queries.normal_()  # now positions steer the queries, so order matters
    assert not torch.allclose(proj(x), proj(moved), atol=1e-3)
    with pytest.raises(ValueError, match="at most 1024 tokens"):
        proj(torch.randn(1, 1025, 8))


@pytest.mark.parametrize("name", ["linear", "mlp2x_gelu", "mlp3x_gelu", "residual_mlp", "lowrank", "moe"])
def test_token_wise_families_accept_any_leading_shape(name):
    """As LLaVA's nn.Sequential and transformers' projectors do: (D,), (B, D), (B, h, w, D) all map token by token,
    and each token's output equals the (B, N, D) path's."""
    proj = small(name).eval()
    x = torch.randn(2, 3, 4, D_VIS)
    ref = proj(x.reshape(2, 12, D_VIS)).reshape(2, 3, 4, -1)
    assert torch.allclose(proj(x), ref, atol=1e-6)
    assert torch.allclose(proj(x[:, 0, 0]), ref[:, 0, 0], atol=1e-6)  # pooled (B, D_vis)
    assert proj(x[0, 0, 0]).shape == (ref.shape[-1],)


@pytest.mark.parametrize("options, message", [
    ({"frobnicate": 3}, "has no option 'frobnicate'; its options: depth, hidden_dim"),
    ({"hidden_dim": "abc"}, "option hidden_dim must be a positive integer, got 'abc'"),
    ({"hidden_dim": 0}, "option hidden_dim must be a positive integer, got 0"),
    ({"hidden_dim": -4}, "option hidden_dim must be a positive integer, got -4"),
    ({"hidden_dim": 16.0}, "option hidden_dim must be a positive integer, got 16.0"),
])
def test_bad_options_name_the_option(options, message):
    with pytest.raises(ValueError, match=message):
        build_projector("mlp2x_gelu", 8, 8, **options)


def test_bad_dims_and_counts_are_refused():
    with pytest.raises(ValueError, match="in_dim must be a positive integer, got 768.5"):
        build_projector("linear", 768.5, 16)
    with pytest.raises(ValueError, match="out_dim must be a positive integer, got 16.0"):
        build_projector("linear", 8, 16.0)
    with pytest.raises(ValueError, match="num_queries must be a positive integer, got 0"):
        build_projector("resampler", 8, 16, num_queries=0)
    with pytest.raises(ValueError, match="bias must be true or false"):
        build_projector("linear", 8, 16, bias="yes")
    assert build_projector("mlp2x_gelu", 8, 16, hidden_dim=None).options["hidden_dim"] == 16


def test_cabstractor_depth_zero_is_the_pool_and_mlp_alone():
    """A block count may be 0 where the family says so (zero_options); other counts still refuse 0."""
    proj = build_projector("cabstractor", D_VIS, 16, output_side=3, depth=0).eval()
    assert len(proj.blocks_before) == len(proj.blocks_after) == 0
    x = torch.randn(2, 36, D_VIS)
    assert proj(x).shape == (2, 9, 16)
    grid = x.reshape(2, 6, 6, D_VIS)
    # each output token is the MLP of the in_proj of its 2 x 2 cell's mean
    cell = grid[:, :2, :2].mean((1, 2))
    hidden = torch.nn.functional.linear(cell, proj.in_proj.weight[:, :, 0, 0], proj.in_proj.bias)
    assert torch.allclose(proj(x)[:, 0], proj.linear_2(proj.act(proj.linear_1(hidden))), atol=1e-5)
    with pytest.raises(ValueError, match="depth must be a non-negative integer, got -1"):
        build_projector("cabstractor", D_VIS, 16, depth=-1)
    with pytest.raises(ValueError, match="output_side must be a positive integer, got 0"):
        build_projector("cabstractor", D_VIS, 16, output_side=0)


def test_cabstractor_tokens_per_cell_writes_a_cells_tokens_in_a_row():
    """tokens_per_cell 2: cell c's MLP output (2 x D_txt) becomes tokens 2c and 2c + 1, in raster order of cells."""
    torch.manual_seed(0)
    one = build_projector("cabstractor", D_VIS, 16, output_side=2, depth=1).eval()
    two = build_projector("cabstractor", D_VIS, 16, output_side=2, depth=1, tokens_per_cell=2).eval()
    x = torch.randn(3, 16, D_VIS)
    y = two(x)
    assert y.shape == (3, 8, 16) and two.num_output_tokens(16) == 8 and one.num_output_tokens(16) == 4
    wide = two.linear_2.weight.shape[0]
    assert wide == 32
    # the same cell features as the one-token path computes, read through the wide layer by hand
    two_trunk = build_projector("cabstractor", D_VIS, 16, output_side=2, depth=1).eval()
    two_trunk.load_state_dict({k: v for k, v in two.state_dict().items() if not k.startswith("linear_2")},
                              strict=False)
    two_trunk.linear_2 = torch.nn.Identity()
    hidden = two_trunk(x)  # (3, 4 cells, 16): after linear_1 and the activation
    by_hand = two.linear_2(hidden)  # (3, 4, 32)
    assert torch.allclose(y[:, 2], by_hand[:, 1, :16], atol=1e-5)  # cell 1's first token
    assert torch.allclose(y[:, 3], by_hand[:, 1, 16:], atol=1e-5)  # cell 1's second token


def test_multidepth_is_one_pixel_shuffle_per_depth_on_the_token_axis():
    """Two depths side by side (vit-s14@4+12 gives 2 x 384 per token): each half goes through its own pixel shuffle
    and the groups follow each other in the prefix, block 4's first; last_scale shrinks only the deepest group."""
    torch.manual_seed(0)
    proj = build_projector("multidepth", 2 * D_VIS, D_TXT, groups=2, scale=2, last_scale=4)
    assert proj.num_output_tokens(65) == 16 + 4 and proj.group_tokens(64) == [16, 4]
    shallow, deep = build_projector("pixel_shuffle", D_VIS, D_TXT, scale=2), build_projector(
        "pixel_shuffle", D_VIS, D_TXT, scale=4)
    shallow.linear.load_state_dict(proj.linears[0].state_dict())
    deep.linear.load_state_dict(proj.linears[1].state_dict())
    x = torch.randn(3, 65, 2 * D_VIS)  # CLS + 8 x 8 grid
    want = torch.cat([shallow(x[..., :D_VIS]), deep(x[..., D_VIS:])], dim=1)  # (3, 16 + 4, D_TXT)
    assert torch.allclose(proj(x), want, atol=1e-6)
    with pytest.raises(ValueError, match="divisible by 3"):
        build_projector("multidepth", 64, D_TXT, groups=3)


def test_multidepth_interleave_orders_the_prefix_by_place():
    """interleave: the same tokens as the depth-ordered prefix, cell by cell (block 4's then block 12's token of a
    cell), so the two tokens of one place are neighbours; it needs one scale for every group."""
    torch.manual_seed(0)
    by_depth = build_projector("multidepth", 2 * D_VIS, D_TXT, groups=2, scale=2)
    by_place = build_projector("multidepth", 2 * D_VIS, D_TXT, **by_depth.config()["options"], interleave=True)
    by_place.load_state_dict(by_depth.state_dict())
    x = torch.randn(2, 65, 2 * D_VIS)
    a, b = by_depth(x), by_place(x)  # (2, 16 + 16, D_TXT) each
    assert b.shape == a.shape == (2, 32, D_TXT) and by_place.num_output_tokens(65) == 32
    assert torch.equal(b[:, 0::2], a[:, :16]) and torch.equal(b[:, 1::2], a[:, 16:])
    assert build_projector("multidepth", 2 * D_VIS, D_TXT, **by_place.config()["options"]).interleave
    assert "interleave" not in by_depth.config()["options"]  # configs saved before it existed still match
    with pytest.raises(ValueError, match="same scale"):
        build_projector("multidepth", 2 * D_VIS, D_TXT, groups=2, scale=2, last_scale=4, interleave=True)


def test_multidepth_pool_groups_average_a_cell_and_forget_its_arrangement():
    """pool_groups 1: the first depth's token of a cell is one linear map of the cell's mean patch (no outline);
    permuting the patches inside a cell leaves it unchanged and changes the shuffled group's token; the last group
    must stay shuffled."""
    torch.manual_seed(0)
    proj = build_projector("multidepth", 2 * D_VIS, D_TXT, groups=2, scale=2, last_scale=4, pool_groups=1)
    assert proj.num_output_tokens(65) == 16 + 4 and proj.linears[0].in_features == D_VIS
    assert build_projector("multidepth", 2 * D_VIS, D_TXT, **proj.config()["options"]).pool_groups == 1
    x = torch.randn(2, 65, 2 * D_VIS)  # CLS + 8 x 8 grid
    grid = x[:, 1:, :D_VIS].reshape(2, 8, 8, D_VIS)
    cell = grid[:, :2, :2].mean((1, 2))  # (2, D_VIS): the top-left 2 x 2 cell of the first depth
    with torch.no_grad():
        out = proj(x)
        assert torch.allclose(out[:, 0], proj.linears[0](cell), atol=1e-5)
        swapped = x.clone()  # the top-left cell's patches 0 and 1 exchanged, at both depths
        swapped[:, [1, 2]] = x[:, [2, 1]]
        moved = proj(swapped)
    assert torch.allclose(moved[:, :16], out[:, :16], atol=1e-5) and not torch.allclose(moved[:, 16], out[:, 16])
    assert "pool_groups" not in build_projector("multidepth", 2 * D_VIS, D_TXT).config()["options"]
    with pytest.raises(ValueError, match="pool_groups must be 0 to 1"):
        build_projector("multidepth", 2 * D_VIS, D_TXT, groups=2, pool_groups=2)


def test_multidepth_fuse_adds_a_cells_depth_tokens_into_one():
    """fuse: one token per cell, the sum of the groups' tokens of that cell (the depth-ordered prefix's two halves
    added); it needs one scale for every group and no interleave."""
    torch.manual_seed(0)
    apart = build_projector("multidepth", 2 * D_VIS, D_TXT, groups=2, scale=2, pool_groups=1)
    fused = build_projector("multidepth", 2 * D_VIS, D_TXT, **apart.config()["options"], fuse=True)
    fused.load_state_dict(apart.state_dict())
    x = torch.randn(2, 65, 2 * D_VIS)
    with torch.no_grad():
        a, b = apart(x), fused(x)  # (2, 16 + 16, D_TXT), (2, 16, D_TXT)
    assert b.shape == (2, 16, D_TXT) and fused.num_output_tokens(65) == 16 and fused.group_tokens(64) == [16]
    assert torch.allclose(b, a[:, :16] + a[:, 16:], atol=1e-5)
    assert build_projector("multidepth", 2 * D_VIS, D_TXT, **fused.config()["options"]).fuse
    assert "fuse" not in apart.config()["options"]
    with pytest.raises(ValueError, match="same scale"):
        build_projector("multidepth", 2 * D_VIS, D_TXT, groups=2, scale=2, last_scale=4, fuse=True)


def test_multidepth_slots_pool_one_object_at_every_depth_into_one_token():
    """slots Q appends Q tokens after the depth groups; each is an attention-weighted sum over the h*w patches of
    BOTH depths (the CLS dropped), plus its slot embedding; positions steer the weights and never enter the values."""
    torch.manual_seed(0)
    proj = build_projector("multidepth", 2 * D_VIS, D_TXT, groups=2, scale=2, last_scale=4, slots=3, rank=8)
    assert proj.num_output_tokens(65) == 16 + 4 + 3
    assert build_projector("multidepth", 2 * D_VIS, D_TXT, **proj.config()["options"]).num_output_tokens(64) == 23
    x = torch.randn(2, 65, 2 * D_VIS)
    with torch.no_grad():
        proj.slot_embed.normal_()
        proj.slot_pos.normal_()
        out = proj(x)
        weights = proj.attn_weights  # (2, 3, 64)
        assert weights.shape == (2, 3, 64) and torch.allclose(weights.sum(-1), torch.ones(2, 3))
        values = proj.slot_value(proj.prepare(x)[:, 1:])  # (2, 64, D_TXT): patches only
        want = torch.einsum("bqn,bnd->bqd", weights, values) + proj.slot_embed
        assert torch.allclose(out[:, 20:], want, atol=1e-5)
        moved = proj.slot_pos.clone()
        proj.slot_pos.copy_(moved.roll(7, dims=0))  # other positions: other weights over the same values
        proj(x)
        assert not torch.allclose(proj.attn_weights, weights)
    assert "slots" not in build_projector("multidepth", 2 * D_VIS, D_TXT).config()["options"]  # old configs match


def test_resampler_pool_averages_each_block_of_the_patch_grid_before_its_keys():
    """resampler(pool=2): a 4 x 4 grid becomes 2 x 2 block means, so moving a patch inside its 2 x 2 block changes
    nothing and moving it to another block does; a grid the pool does not divide is refused."""
    torch.manual_seed(0)
    proj = build_projector("resampler", 8, 16, num_queries=3, num_heads=4, pool=2).eval()
    x = torch.randn(2, 16, 8)
    grid = torch.arange(16).reshape(4, 4)
    inside = grid.clone()
    inside[0, 0], inside[1, 1] = grid[1, 1], grid[0, 0]  # within the top-left block
    across = grid.clone()
    across[0, 0], across[3, 3] = grid[3, 3], grid[0, 0]  # between two blocks
    with torch.no_grad():
        out = proj(x)
        assert out.shape == (2, 3, 16)
        assert torch.allclose(proj(x[:, inside.flatten()]), out, atol=1e-5)
        assert not torch.allclose(proj(x[:, across.flatten()]), out, atol=1e-3)
    with pytest.raises(ValueError, match="square patch grid"):
        proj(torch.randn(2, 15, 8))
    assert build_projector("resampler", 8, 16, num_heads=4).options.get("pool") is None  # old configs still match


def test_wordslots_reads_each_patch_alone_and_places_by_keys_with_a_fixed_prompt():
    """wordslots: Q slots then P prompt tokens. With no positions learned yet the slots are a set function of the
    patches (permuting them changes nothing); positions on the keys make place matter; the prompt tokens are the
    same for every image."""
    torch.manual_seed(0)
    proj = build_projector("wordslots", 8, 16, num_queries=3, rank=4, hidden_dim=12, prompt=2).eval()
    x = torch.randn(2, 9, 8)
    perm = torch.randperm(9)
    with torch.no_grad():
        out = proj(x)
        assert out.shape == (2, 5, 16) and proj.num_output_tokens(9) == 5
        assert torch.allclose(proj(x[:, perm]), out, atol=1e-5)
        assert torch.equal(out[0, 3:], out[1, 3:])  # the prompt does not depend on the image
        proj.pos_embed.normal_()
        moved = proj(x[:, perm])
        assert not torch.allclose(moved[:, :3], proj(x)[:, :3], atol=1e-3)
    with pytest.raises(ValueError, match="num_queries"):
        build_projector("wordslots", 8, 16, num_queries=0)
    with pytest.raises(ValueError, match="square patch grid"):
        build_projector("wordslots", 8, 16, pool=2)(torch.randn(1, 10, 8))
