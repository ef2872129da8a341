import pytest
import torch
from safetensors.torch import save_file

from tokenforge.errors import TokenforgeError
from tokenforge.models.timm_import import load_timm
from tokenforge.models.vit import ModelConfig, TokenViT, patchify

NAME = "vit_tiny_patch16_224"
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # per channel, so a wrong fold order would show
KWARGS = {
    "img_size": 16, "patch_size": 4, "in_chans": 3, "depth": 2, "embed_dim": 32, "num_heads": 2,
    "pretrained_cfg_overlay": {"mean": MEAN, "std": STD},
}


def timm_vit(**overrides):
    """A tiny timm ViT with every parameter perturbed (biases and norm weights too, not just their init)."""
    import timm

    torch.manual_seed(0)
    model = timm.create_model(NAME, pretrained=False, num_classes=0, **{**KWARGS, **overrides})
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model.eval()


def save(model, path, wrap=None):
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state if wrap is None else {wrap: state, "epoch": 3}, path)
    return path


def images(n=3, size=16, channels=3):
    generator = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (n, size, size, channels), dtype=torch.uint8, generator=generator)


def timm_features(model, imgs):
    """timm's pre-logit features (class token after the norm) on the normalised images it expects."""
    x = imgs.permute(0, 3, 1, 2).float() / 255
    x = (x - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]
    with torch.no_grad():
        return model.forward_head(model.forward_features(x), pre_logits=True)


def load(path, **kwargs):
    args = {"grid": (4, 4), "patch": 4, "channels": 3, "num_classes": 5, "model_kwargs": KWARGS, **kwargs}
    return load_timm(NAME, path, **args).eval()


def test_safetensors_checkpoint_gives_timm_features(tmp_path):
    ref = timm_vit()
    model = load(save(ref, tmp_path / "vit.safetensors"))
    assert isinstance(model, TokenViT)
    cfg = model.config
    assert isinstance(cfg, ModelConfig)
    assert (cfg.input, cfg.patch, cfg.code_dim, cfg.codebook_size, cfg.grid) == ("pixels", 4, 48, 0, (4, 4))
    assert (cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.mlp_ratio, cfg.prompts) == (32, 2, 2, 4.0, 0)
    imgs = images()
    with torch.no_grad():
        ours = model.features(patchify(imgs, 4))
        assert model(patchify(imgs, 4)).shape == (3, 5)  # a fresh head for the new classes
    # the weight mapping (projection order, normalisation fold, positions, blocks, norm) is exact
    assert torch.allclose(ours, timm_features(ref, imgs), atol=1e-5)


def test_weights_only_torch_checkpoints(tmp_path):
    ref = timm_vit()
    imgs = images()
    expected = timm_features(ref, imgs)
    files = {"bare.pt": None, "train.pth": "state_dict", "model.bin": "model"}  # bare, timm train, wrapped
    for path, wrap in ((tmp_path / name, wrap) for name, wrap in files.items()):
        model = load(save(ref, path, wrap))
        with torch.no_grad():
            assert torch.allclose(model.features(patchify(imgs, 4)), expected, atol=1e-5), path.name


def test_head_keys_in_the_checkpoint_are_dropped(tmp_path):
    import timm

    torch.manual_seed(0)
    with_head = timm.create_model(NAME, pretrained=False, num_classes=7, **KWARGS)
    model = load(save(with_head, tmp_path / "vit.safetensors"), num_classes=3)
    assert model.vit.head.weight.shape == (3, 32)


def test_one_channel_from_an_rgb_checkpoint_is_the_model_on_grey_rgb(tmp_path):
    ref = timm_vit()
    model = load(save(ref, tmp_path / "vit.safetensors"), channels=1)
    assert model.config.code_dim == 16
    grey = images(channels=1)
    with torch.no_grad():
        ours = model.features(patchify(grey, 4))
        assert model(patchify(grey, 4)).shape == (3, 5)
    assert ours.shape == (3, 32)
    # adapt_input_conv sums the colour weights: exactly the RGB model on the grey image repeated into RGB
    assert torch.allclose(ours, timm_features(ref, grey.expand(-1, -1, -1, 3)), atol=1e-5)


def test_positions_are_resampled_to_another_grid(tmp_path):
    ref = timm_vit()
    model = load(save(ref, tmp_path / "vit.safetensors"), grid=(6, 5))
    assert model.vit.pos_embed.shape == (1, 1 + 30, 32)
    assert torch.equal(model.vit.pos_embed[:, :1], ref.pos_embed[:, :1])  # the class token's is kept
    with torch.no_grad():
        out = model(patchify(images(size=24)[:, :, :20], 4))
    assert out.shape == (3, 5) and torch.isfinite(out).all()


def test_register_tokens_and_no_embed_class_are_exact(tmp_path):
    ref = timm_vit(reg_tokens=2, no_embed_class=True)
    kwargs = {**KWARGS, "reg_tokens": 2, "no_embed_class": True}
    model = load(save(ref, tmp_path / "vit.safetensors"), model_kwargs=kwargs)
    assert model.config.prompts == 2 and model.vit.num_prefix_tokens == 3
    imgs = images()
    with torch.no_grad():
        assert torch.allclose(model.features(patchify(imgs, 4)), timm_features(ref, imgs), atol=1e-5)


# --- errors ---------------------------------------------------------------------------------------


def test_wrong_patch_size_names_model_and_sizes(tmp_path):
    path = save(timm_vit(), tmp_path / "vit.safetensors")
    with pytest.raises(TokenforgeError, match=rf"{NAME}.*4x4.*2x2"):
        load(path, patch=2, grid=(8, 8))


def test_checkpoint_with_missing_keys_names_the_file(tmp_path):
    state = {k: v.contiguous() for k, v in timm_vit().state_dict().items() if not k.startswith("blocks.1.mlp")}
    path = tmp_path / "partial.safetensors"
    save_file(state, str(path))
    with pytest.raises(TokenforgeError, match=r"partial\.safetensors.*missing blocks\.1\.mlp"):
        load(path)


def test_checkpoint_of_another_size_names_the_file(tmp_path):
    path = save(timm_vit(img_size=32), tmp_path / "big.safetensors")
    with pytest.raises(TokenforgeError, match=r"big\.safetensors.*pos_embed.*img_size"):
        load(path)


def test_missing_and_unreadable_files_name_the_file(tmp_path):
    with pytest.raises(TokenforgeError, match=r"nothing\.safetensors"):
        load(tmp_path / "nothing.safetensors")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(TokenforgeError, match=r"junk\.pt"):
        load(junk)


@pytest.mark.parametrize(
    ("overrides", "names"),
    [
        ({"init_values": 1e-5}, "ls1"),  # layer scale
        ({"qkv_bias": False}, "qkv"),
        ({"qk_norm": True}, "qk norm"),
        ({"pre_norm": True}, "norm_pre"),
        ({"global_pool": "avg"}, "pools with 'avg'"),
    ],
)
def test_what_tokenvit_cannot_represent_is_an_error_naming_the_model(tmp_path, overrides, names):
    path = save(timm_vit(**overrides), tmp_path / "vit.safetensors")
    with pytest.raises(TokenforgeError, match=rf"{NAME}.*{names}"):
        load(path, model_kwargs={**KWARGS, **overrides})


def test_not_a_vision_transformer(tmp_path):
    with pytest.raises(TokenforgeError, match="resnet18"):
        load_timm("resnet18", tmp_path / "x.safetensors", grid=(4, 4), patch=4, channels=3, num_classes=2)
