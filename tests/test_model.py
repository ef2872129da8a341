import pytest
import torch

from tokenforge.errors import TokenforgeError
from tokenforge.models.vit import ModelConfig, TokenViT, load_model, save_model


def tiny(num_classes=6):
    torch.manual_seed(0)
    cfg = ModelConfig(grid=(4, 4), codebook_size=32, code_dim=8, num_classes=num_classes, embed_dim=32, depth=2)
    return TokenViT(cfg, torch.randn(32, 8)).eval()


def test_partial_forward_with_all_tokens_equals_full_forward():
    model = tiny()
    ids = torch.randint(0, 32, (3, 4, 4))
    full = model(ids)
    partial = model(ids.flatten(1), torch.arange(16).expand(3, 16))
    assert full.shape == (3, 6)
    assert torch.allclose(full, partial, atol=1e-5)


def test_partial_forward_depends_on_positions():
    model = tiny()
    ids = torch.randint(0, 32, (2, 5))
    a = model(ids, torch.tensor([[0, 1, 2, 3, 4]] * 2))
    b = model(ids, torch.tensor([[11, 12, 13, 14, 15]] * 2))
    assert not torch.allclose(a, b)


def test_codebook_is_frozen_buffer():
    model = tiny()
    assert "codebook" not in dict(model.named_parameters())
    assert "codebook" in model.state_dict()


def test_save_load_round_trip(tmp_path):
    model = tiny()
    save_model(model, tmp_path)
    again = load_model(tmp_path)
    ids = torch.randint(0, 32, (2, 4, 4))
    assert torch.equal(model(ids), again(ids))


def test_load_rejects_mismatched_config(tmp_path):
    save_model(tiny(num_classes=6), tmp_path)
    text = (tmp_path / "model.json").read_text().replace('"num_classes": 6', '"num_classes": 7')
    (tmp_path / "model.json").write_text(text)
    with pytest.raises(TokenforgeError, match="do not match"):
        load_model(tmp_path)


def test_load_missing(tmp_path):
    with pytest.raises(TokenforgeError, match="model file not found"):
        load_model(tmp_path)
