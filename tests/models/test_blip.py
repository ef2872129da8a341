"""tokenforge.models.blip: HF BLIP (VQA, captioning) on unit grids, tiny models, CPU, no downloads."""

from __future__ import annotations

import json

import pytest
import torch

from tokenforge.errors import TokenforgeError
from tokenforge.models.blip import BlipModel, BlipSettings, build_blip
from tokenforge.models.vit import patchify

pytestmark = pytest.mark.usefixtures("one_thread")

PAD, BOS, SEP = 0, 1, 2
B = 4


def settings(task: str = "vqa", **overrides) -> BlipSettings:
    base = {"task": task, "input": "tokens", "width": 32, "vision_layers": 1, "text_layers": 1, "heads": 4,
            "mlp_ratio": 2.0, "vocab_size": 30, "pad_id": PAD, "bos_id": BOS, "eos_id": SEP, "sep_id": SEP,
            "max_text_len": 12, "grid": (4, 4), "num_codes": 16, "code_dim": 4}
    return BlipSettings(**{**base, **overrides})


def codebook() -> torch.Tensor:
    return torch.randn(16, 4, generator=torch.Generator().manual_seed(1))


def tiny(task: str = "vqa", seed: int = 0, **overrides) -> BlipModel:
    return build_blip(settings(task, **overrides), codebook(), seed)


def batch(task: str, seed: int = 0):
    """Units (B, 16), prompt ids/mask and target ids/mask with some padding, all ids >= 3 (no specials)."""
    g = torch.Generator().manual_seed(seed)
    units = torch.randint(0, 16, (B, 16), generator=g)
    if task == "vqa":
        prompt = torch.randint(3, 30, (B, 4), generator=g)
        prompt_mask = torch.ones(B, 4, dtype=torch.long)
        prompt_mask[1, 2:] = 0
    else:  # a fixed prefix, "a picture of"
        prompt = torch.tensor([[7, 8, 9]]).repeat(B, 1)
        prompt_mask = torch.ones(B, 3, dtype=torch.long)
    target = torch.randint(3, 30, (B, 3), generator=g)
    target_mask = torch.ones(B, 3, dtype=torch.long)
    target_mask[2, 1:] = 0
    return units, prompt, prompt_mask, target, target_mask


def subset_positions(n: int = 5, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(16, generator=g)[:n] for _ in range(B)])


@pytest.mark.parametrize("task", ["vqa", "captioning"])
def test_loss_backward_full_and_subset(task):
    model = tiny(task)
    units, prompt, pmask, target, tmask = batch(task)
    loss = model.loss(units, None, prompt, pmask, target, tmask)
    assert loss.shape == (B,) and torch.isfinite(loss).all()
    loss.mean().backward()
    assert model.stem.proj.weight.grad is not None and model.stem.proj.weight.grad.abs().sum() > 0
    assert model.stem.codebook.grad is None  # a frozen buffer
    positions = subset_positions()
    sub = model.loss(units.gather(1, positions), positions, prompt, pmask, target, tmask)
    assert sub.shape == (B,) and torch.isfinite(sub).all()
    grid = model.loss(units.view(B, 4, 4), None, prompt, pmask, target, tmask)  # a (B, h, w) grid
    assert torch.equal(grid.detach(), loss.detach())


@pytest.mark.parametrize("task", ["vqa", "captioning"])
def test_padding_is_masked(task):
    """A padded row gives the loss and the generation of the same row unpadded (masks and positions right)."""
    model = tiny(task).eval()
    units, prompt, pmask, target, tmask = batch(task)
    row = 1 if task == "vqa" else 2
    alone = {"prompt_ids": prompt[row : row + 1, : int(pmask[row].sum())], "prompt_mask": None,
             "target_ids": target[row : row + 1, : int(tmask[row].sum())], "target_mask": None}
    with torch.no_grad():
        full = model.loss(units, None, prompt, pmask, target, tmask)[row]
        single = model.loss(units[row : row + 1], None, **alone)[0]
    torch.testing.assert_close(full, single, rtol=1e-5, atol=1e-5)
    left = torch.cat([torch.zeros_like(target[:, :1]), target], 1)  # left padding is moved to the right
    with torch.no_grad():
        shifted = model.loss(units, None, prompt, pmask, left, torch.cat([torch.zeros_like(tmask[:, :1]), tmask], 1))
    torch.testing.assert_close(shifted, model.loss(units, None, prompt, pmask, target, tmask).detach())
    gen = model.generate(units, None, prompt, pmask, max_new_tokens=4)
    gen_row = model.generate(units[row : row + 1], None, alone["prompt_ids"], None, max_new_tokens=4)
    assert torch.equal(gen[row, : gen_row.shape[1]], gen_row[0])


@pytest.mark.parametrize("task", ["vqa", "captioning"])
def test_generate_deterministic_and_bounded(task):
    model = tiny(task)
    model.train()
    units, prompt, pmask, _, _ = batch(task)
    first = model.generate(units, None, prompt, pmask, max_new_tokens=5)
    second = model.generate(units, None, prompt, pmask, max_new_tokens=5)
    assert model.training  # restored
    assert first.dtype == torch.long and first.shape[0] == B and first.shape[1] <= 5
    assert torch.equal(first, second)
    assert not (first == SEP).any()  # the end token is stripped
    positions = subset_positions()
    sub = model.generate(units.gather(1, positions), positions, prompt, pmask, max_new_tokens=3)
    assert sub.shape[0] == B and sub.shape[1] <= 3
    assert torch.equal(tiny(task).generate(units, None, prompt, pmask, max_new_tokens=5), first)  # same seed


def test_captioning_prompts_of_different_lengths_and_none():
    model = tiny("captioning")
    units, prompt, pmask, _, _ = batch("captioning")
    pmask[0, 1:] = 0
    out = model.generate(units, None, prompt, pmask, max_new_tokens=4)
    alone = model.generate(units[:1], None, prompt[:1, :1], None, max_new_tokens=4)
    assert torch.equal(out[0, : alone.shape[1]], alone[0])
    assert model.generate(units, None, None, None, max_new_tokens=4).shape[0] == B
    assert model.loss(units, None, None, None, *batch("captioning")[3:]).shape == (B,)


@pytest.mark.parametrize("task", ["vqa", "captioning"])
def test_hf_generate_accepts_packed_units(task):
    """HF's own generate, given the packed units as pixel_values, agrees with ours (unpadded prompts)."""
    model = tiny(task).eval()
    units, prompt, _, _, _ = batch(task)
    positions = subset_positions()
    units = units.gather(1, positions)
    packed = model.pack(units, positions)
    ours = model.generate(units, positions, prompt if task == "vqa" else None, None, max_new_tokens=4)
    if task == "vqa":
        theirs = model.hf.generate(input_ids=prompt, pixel_values=packed, max_new_tokens=4)
    else:
        theirs = model.hf.generate(pixel_values=packed, max_new_tokens=4)
    theirs = theirs[:, 1:]  # bos
    ended = (theirs == SEP).long().cumsum(1) > 0
    theirs = theirs.masked_fill(ended, PAD)[:, : ours.shape[1]]
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize("task", ["vqa", "captioning"])
def test_memorises_and_generates_the_target(task):
    model = tiny(task)
    units, prompt, pmask, target, tmask = batch(task)
    if task == "captioning":  # the image alone tells the samples apart
        prompt, pmask = None, None
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    first = None
    for _ in range(40):
        loss = model.loss(units, None, prompt, pmask, target, tmask)
        first = loss.detach() if first is None else first
        optimizer.zero_grad()
        loss.mean().backward()
        optimizer.step()
    assert loss.mean() < 0.3 * first.mean()
    out = model.generate(units, None, prompt, pmask, max_new_tokens=5)
    expected = target.masked_fill(tmask == 0, PAD)
    assert torch.equal(out[:, : expected.shape[1]], expected)
    assert out.shape[1] == expected.shape[1]  # stops with sep after the longest target


@pytest.mark.parametrize("task", ["vqa", "captioning"])
def test_relevance_shapes_eval_and_no_grads(task):
    model = tiny(task)
    model.train()
    units, prompt, pmask, target, tmask = batch(task)
    positions = subset_positions()
    for units_, positions_, n in [(units, None, 16), (units.gather(1, positions), positions, 5)]:
        for method in ("gradient", "atman", "random"):
            scores = model.relevance(units_, positions_, prompt, pmask, target, tmask, method,
                                     generator=torch.Generator().manual_seed(0), chunk=7)
            assert scores.shape == (B, n) and torch.isfinite(scores).all(), method
            assert model.training
            assert all(p.grad is None for p in model.parameters())
    atman = model.relevance(units, None, prompt, pmask, target, tmask, "atman")
    assert atman.abs().max() > 0  # suppressing a unit changes the loss
    vision_only = model.relevance(units, None, prompt, pmask, target, tmask, "atman", atman_scope="vision")
    assert not torch.equal(atman, vision_only)
    with torch.no_grad():
        plain = model.eval().loss(units, None, prompt, pmask, target, tmask)
    one = model.relevance(units[:1], None, prompt[:1], pmask[:1], target[:1], tmask[:1], "atman", chunk=16)
    torch.testing.assert_close(one[0], atman[0], rtol=1e-4, atol=1e-6)  # chunking and batching do not matter
    assert torch.isfinite(plain).all()
    a = model.relevance(units, None, prompt, pmask, target, tmask, "random", generator=torch.Generator().manual_seed(3))
    b = model.relevance(units, None, prompt, pmask, target, tmask, "random", generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and (a >= 0).all() and (a < 1).all()


def test_gradient_relevance_is_gradient_times_input():
    model = tiny("captioning").eval()
    units, prompt, pmask, target, tmask = batch("captioning")
    scores = model.relevance(units, None, prompt, pmask, target, tmask, "gradient")
    emb = model.stem.embed(units).detach().requires_grad_(True)
    original = model.stem.embed
    model.stem.embed = lambda _units: emb  # the same forward, the embedding as a leaf
    try:
        loss = model.loss(units, None, prompt, pmask, target, tmask)
    finally:
        model.stem.embed = original
    (grad,) = torch.autograd.grad(loss.sum(), emb)
    torch.testing.assert_close(scores, (grad * emb).sum(-1).abs().detach())


@pytest.mark.parametrize("task", ["vqa", "captioning"])
def test_atman_scales_pre_softmax_scores(task):
    """AtMan's suppression: the attention probabilities are softmax(scores with column j times 0.1), in the vision
    self-attention and in the text cross-attention to the image; other attentions untouched."""
    model = tiny(task).eval()
    units, prompt, pmask, target, tmask = batch(task)
    packed = model.pack(units)
    j = 5
    scale = torch.ones(B, 17)
    scale[:, 1 + j] = 0.1
    layer = model.hf.vision_model.encoder.layers[0]
    attn = layer.self_attn
    with torch.no_grad():
        x = layer.layer_norm1(model.stem(packed))
        q, k, _ = attn.qkv(x).view(B, 17, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-1, -2) * attn.scale
        scores[..., 1 + j] *= 0.1
        with model.key_scale(scale):
            probs = model.hf.vision_model(pixel_values=packed, output_attentions=True).attentions[0]
        torch.testing.assert_close(probs, scores.softmax(-1), rtol=1e-5, atol=1e-6)
        image = model.hf.vision_model(pixel_values=packed).last_hidden_state
        text_model = model.hf.text_encoder if task == "vqa" else model.hf.text_decoder.bert
        cross = text_model.encoder.layer[0].crossattention.self
        seen = {}

        def record(module, args, kwargs, output):
            seen.update(hidden=args[0], image=kwargs["encoder_hidden_states"], probs=output[1])

        handle = cross.register_forward_hook(record, with_kwargs=True)
        try:
            with model.key_scale(scale):
                model.losses(packed, model.text_batch(prompt, pmask, target, tmask, B))
        finally:
            handle.remove()
        image_after = model.hf.vision_model(pixel_values=packed).last_hidden_state  # hooks removed: plain again
        heads, size = cross.num_attention_heads, cross.attention_head_size
        q = cross.query(seen["hidden"]).unflatten(-1, (heads, size)).transpose(1, 2)
        k = torch.nn.functional.linear(seen["image"], cross.key.weight, cross.key.bias)  # unhooked keys
        k = k.unflatten(-1, (heads, size)).transpose(1, 2)
        scores = q @ k.transpose(-1, -2) / size**0.5
        scores[..., 1 + j] *= 0.1
        torch.testing.assert_close(seen["probs"], scores.softmax(-1), rtol=1e-5, atol=1e-6)
    assert torch.equal(image, image_after)
    with torch.no_grad():
        plain = model.losses(packed, model.text_batch(prompt, pmask, target, tmask, B))
        with model.key_scale(torch.ones(B, 17)):
            same = model.losses(packed, model.text_batch(prompt, pmask, target, tmask, B))
    torch.testing.assert_close(plain, same)


def test_save_load_round_trip(tmp_path):
    for task in ("vqa", "captioning"):
        model = tiny(task)
        units, prompt, pmask, target, tmask = batch(task)
        model.save(tmp_path / task)
        assert json.loads((tmp_path / task / "blip_settings.json").read_text())["grid"] == [4, 4]
        loaded = BlipModel.load(tmp_path / task)
        assert loaded.settings == model.settings
        a, b = model.state_dict(), loaded.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        with torch.no_grad():
            assert torch.equal(model.eval().loss(units, None, prompt, pmask, target, tmask),
                               loaded.eval().loss(units, None, prompt, pmask, target, tmask))
    with pytest.raises(TokenforgeError):
        BlipModel.load(tmp_path / "missing")


def test_same_seed_same_weights_and_global_rng_untouched():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = tiny("vqa", seed=7)
    after = torch.rand(1)
    assert torch.equal(before, after)
    b, c = tiny("vqa", seed=7), tiny("vqa", seed=8)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_pixels_input():
    s = settings("captioning", input="pixels", num_codes=0, code_dim=0, patch_features=12)
    model = build_blip(s, None, 0)
    images = torch.randint(0, 256, (B, 8, 8, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    patches = patchify(images, 2).flatten(1, 2)  # (B, 16, 12) uint8
    _, _, _, target, tmask = batch("captioning")
    loss = model.loss(patches, None, None, None, target, tmask)
    assert loss.shape == (B,) and torch.isfinite(loss).all()
    loss.mean().backward()
    positions = subset_positions()
    sub = patches.gather(1, positions[..., None].expand(-1, -1, 12))
    assert torch.equal(model.loss(sub, positions, None, None, target, tmask).detach(),
                       model.loss(sub.float(), positions, None, None, target, tmask).detach())  # float: same 0..255 scale
    assert model.generate(sub, positions, None, None, max_new_tokens=3).shape[1] <= 3
    assert model.relevance(sub, positions, None, None, target, tmask, "atman").shape == (B, 5)


def hf_checkpoint(path, task: str):
    """A tiny HF BLIP saved locally: 8x8 RGB images, patch 2 (a 4x4 grid), vocab 30."""
    import transformers

    config = transformers.BlipConfig(
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4,
                       "image_size": 8, "patch_size": 2, "initializer_range": 0.02},
        text_config={"vocab_size": 30, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                     "num_attention_heads": 4, "max_position_embeddings": 16, "pad_token_id": PAD,
                     "bos_token_id": BOS, "eos_token_id": SEP, "sep_token_id": SEP},
    )
    torch.manual_seed(0)
    hf = (transformers.BlipForQuestionAnswering if task == "vqa" else transformers.BlipForConditionalGeneration)(config)
    hf.save_pretrained(path)
    return hf


@pytest.mark.parametrize("task", ["vqa", "captioning"])
def test_from_pretrained_tokens(tmp_path, task):
    hf = hf_checkpoint(tmp_path / "ckpt", task)
    s = settings(task, width=8, vision_layers=3, heads=2, pretrained=str(tmp_path / "ckpt"))
    model = build_blip(s, codebook(), 0)
    assert model.settings.width == 32 and model.settings.vision_layers == 1 and model.settings.heads == 4
    theirs = hf.state_dict()
    ours = model.hf.state_dict()
    shared = [k for k in theirs if not k.startswith("vision_model.embeddings.")]
    assert all(torch.equal(theirs[k], ours[k]) for k in shared)
    torch.testing.assert_close(model.stem.position_embedding, hf.vision_model.embeddings.position_embedding)  # 4x4 = 4x4
    units, prompt, pmask, target, tmask = batch(task)
    loss = model.loss(units, None, prompt, pmask, target, tmask)
    assert torch.isfinite(loss).all()
    assert model.generate(units, None, prompt, pmask, max_new_tokens=3).shape[1] <= 3
    again = build_blip(s, codebook(), 0)
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in model.state_dict().items())
    model.save(tmp_path / "saved")
    loaded = BlipModel.load(tmp_path / "saved")  # without the checkpoint folder
    with torch.no_grad():
        assert torch.equal(model.eval().loss(units, None, prompt, pmask, target, tmask),
                           loaded.eval().loss(units, None, prompt, pmask, target, tmask))
    small = BlipModel.from_pretrained(tmp_path / "ckpt", settings(task, grid=(2, 3)), codebook())  # interpolated
    assert small.stem.position_embedding.shape == (1, 7, 32)
    assert torch.isfinite(small.loss(units[:, :6], None, prompt, pmask, target, tmask)).all()
    with pytest.raises(TokenforgeError):
        BlipModel.from_pretrained(tmp_path / "ckpt", settings(task, vocab_size=31), codebook())
    with pytest.raises(TokenforgeError):
        BlipModel.from_pretrained(tmp_path / "nowhere", settings(task), codebook())


def test_from_pretrained_pixels_reproduces_hf_patch_embedding(tmp_path):
    """Pixels with the checkpoint's patch size: the stem on uint8 patches equals HF's embeddings on the image
    normalised as BLIP's processor does."""
    hf = hf_checkpoint(tmp_path / "ckpt", "captioning")
    s = settings("captioning", input="pixels", num_codes=0, code_dim=0, patch_features=12)
    model = BlipModel.from_pretrained(tmp_path / "ckpt", s)
    images = torch.randint(0, 256, (B, 8, 8, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073])
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711])
    pixel_values = ((images.float() / 255 - mean) / std).permute(0, 3, 1, 2)
    with torch.no_grad():
        expected = hf.vision_model(pixel_values=pixel_values).last_hidden_state
        got = model.hf.vision_model(pixel_values=model.pack(patchify(images, 2).flatten(1, 2))).last_hidden_state
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_errors():
    model = tiny("vqa")
    units, prompt, pmask, target, tmask = batch("vqa")
    with pytest.raises(TokenforgeError):
        model.loss(units[:, :5], None, prompt, pmask, target, tmask)  # a subset needs positions
    with pytest.raises(TokenforgeError):
        model.loss(units + 16, None, prompt, pmask, target, tmask)  # code ids out of range
    with pytest.raises(TokenforgeError):
        model.loss(units, None, prompt, torch.zeros_like(pmask), target, tmask)  # an empty question
    with pytest.raises(TokenforgeError):
        model.loss(units, None, prompt, pmask, torch.randint(3, 30, (B, 20)), None)  # longer than max_text_len
    with pytest.raises(TokenforgeError):
        model.relevance(units, None, prompt, pmask, target, tmask, "lrp")
    with pytest.raises(TokenforgeError):
        build_blip(settings("retrieval"), codebook(), 0)
    with pytest.raises(TokenforgeError):
        build_blip(settings("vqa"), torch.randn(8, 4), 0)  # codebook shape


@pytest.mark.parametrize("task", ["vqa", "captioning"])
def test_a_blind_model_answers_without_the_image(task, tmp_path):
    """The question-only control (settings.blind): the loss and the generated text are the same for any image units;
    the model that sees the image gives other losses for other images. The setting survives save/load."""
    units, prompt, pmask, target, tmask = batch(task)
    other = (units + 5) % 16
    with torch.no_grad():
        blind = tiny(task, blind=True).eval()
        assert torch.equal(blind.loss(units, None, prompt, pmask, target, tmask),
                           blind.loss(other, None, prompt, pmask, target, tmask))
        assert torch.equal(blind.generate(units, None, prompt, pmask, max_new_tokens=3),
                           blind.generate(other, None, prompt, pmask, max_new_tokens=3))
        seeing = tiny(task).eval()
        assert not torch.equal(seeing.loss(units, None, prompt, pmask, target, tmask),
                               seeing.loss(other, None, prompt, pmask, target, tmask))
    blind.save(tmp_path / "blind")
    assert BlipModel.load(tmp_path / "blind").settings.blind
