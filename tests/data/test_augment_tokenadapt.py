"""augment.tokenadapt_p: the TokenAdapt half of a batch in `TokenAugmenter.embed` (data/augment.py)."""

import pytest
import torch
import torch.nn.functional as F

from tokenforge.data.augment import AugmentConfig, TokenAugmenter, mixup_or_cutmix
from tokenforge.errors import TokenforgeError
from tokenforge.models.vit import standardised
from tokenforge.tokenizer.adapt import AdapterConfig, TokenAdapter

K, D, B, H, W, C = 12, 4, 8, 5, 6, 4


pytestmark = pytest.mark.usefixtures("one_thread")


def raw_codebook(seed: int = 1) -> torch.Tensor:
    return 3 * torch.randn(K, D, generator=torch.Generator().manual_seed(seed)) + 2


def adapter(seed: int = 1) -> TokenAdapter:
    torch.manual_seed(0)
    return TokenAdapter(AdapterConfig(K, D, (H, W), width=8, heads=2), raw_codebook(seed)).eval()


def augmenter(seed: int = 0, **settings) -> TokenAugmenter:
    """As training builds it: the model's standardised codebook, the adapter with its raw one."""
    config = AugmentConfig(**{"tokenadapt_p": 1.0, **settings})
    return TokenAugmenter(config, standardised(raw_codebook()), None, seed, adapter=adapter())


def batch(seed: int = 0, size: int = B):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(K, (size, H, W), generator=gen), F.one_hot(torch.arange(size) % C, C).float()


def lookup(ids):
    return standardised(raw_codebook())[ids].permute(0, 3, 1, 2)


def test_only_the_second_half_changes_and_it_holds_whole_codewords():
    aug = augmenter()
    ids, targets = batch()
    emb, out = aug.embed(ids, targets)
    assert emb.shape == (B, D, H, W) and out.shape == (B, C)
    assert torch.equal(emb[: B // 2], lookup(ids[: B // 2])) and torch.equal(out[: B // 2], targets[: B // 2])
    adapted = emb[B // 2 :].permute(0, 2, 3, 1).reshape(-1, D)
    # hard argmax: every cell is exactly a codeword of the model's codebook
    assert (adapted[:, None, :] == standardised(raw_codebook())[None]).all(2).any(1).all()
    assert not torch.equal(emb[B // 2 :], lookup(ids[B // 2 :]))
    assert torch.allclose(out.sum(1), torch.ones(B)) and (out >= 0).all()


def test_the_adapted_half_has_mixed_targets():
    mixed = 0
    aug = augmenter()
    for seed in range(6):
        _, out = aug.embed(*batch(seed))
        mixed += int(((out[B // 2 :] > 0) & (out[B // 2 :] < 1)).any())
    assert mixed >= 5  # Mixup or CutMix on every batch (a CutMix box can be empty now and then)


def test_same_seed_same_outputs_and_generator_state_resumes():
    a, b = augmenter(seed=3), augmenter(seed=3)
    for seed in range(3):
        ea, ta = a.embed(*batch(seed))
        eb, tb = b.embed(*batch(seed))
        assert torch.equal(ea, eb) and torch.equal(ta, tb)
    state = a.generator.get_state()
    first = a.embed(*batch(7))
    c = augmenter(seed=99)
    c.generator.set_state(state)
    again = c.embed(*batch(7))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    other = augmenter(seed=4).embed(*batch(0))
    assert not torch.equal(other[0], augmenter(seed=3).embed(*batch(0))[0])


def test_the_probability_is_per_batch_and_zero_is_todays_path():
    aug = augmenter(tokenadapt_p=0.5)
    changed = []
    for seed in range(20):
        ids, targets = batch(seed)
        emb, _ = aug.embed(ids, targets)
        changed.append(not torch.equal(emb, lookup(ids)))
    assert 4 <= sum(changed) <= 16
    plain = TokenAugmenter(AugmentConfig(crop_p=1.0, cutmix_p=1.0), standardised(raw_codebook()), None, 5)
    off = TokenAugmenter(AugmentConfig(crop_p=1.0, cutmix_p=1.0, tokenadapt_p=0.0), standardised(raw_codebook()), None, 5,
                         adapter=adapter())
    assert off.adapter is None
    for x, y in zip(plain.embed(*batch(1)), off.embed(*batch(1))):
        assert torch.equal(x, y)


def test_the_base_half_keeps_its_augmentations():
    """With crop, CutMix, noise and ColorAdapt on, both halves differ from the lookup, and the targets of the base half
    are mixed within the base half only."""
    aug = augmenter(crop_p=1.0, cutmix_p=1.0, noise_p=1.0, coloradapt_p=1.0)
    ids, targets = batch(2)
    emb, out = aug.embed(ids, targets)
    assert not torch.equal(emb[: B // 2], lookup(ids[: B // 2]))
    assert torch.isfinite(emb).all() and torch.allclose(out.sum(1), torch.ones(B))
    base_classes = targets[: B // 2].sum(0) > 0
    assert (out[: B // 2][:, ~base_classes] == 0).all()


def test_batch_of_one_is_not_split():
    ids, targets = batch(size=1)
    emb, out = augmenter().embed(ids, targets)
    assert torch.equal(emb, lookup(ids)) and torch.equal(out, targets)


def test_an_adapter_is_needed_and_must_fit_the_codebook():
    config = AugmentConfig(tokenadapt_p=0.5)
    with pytest.raises(TokenforgeError, match="augment.tokenadapt_p: > 0 needs a TokenAdapt adapter"):
        TokenAugmenter(config, standardised(raw_codebook()), None, 0)
    with pytest.raises(TokenforgeError, match="--adapter: an adapter made for another codebook"):
        TokenAugmenter(config, standardised(raw_codebook(seed=2)), None, 0, adapter=adapter())
    with pytest.raises(TokenforgeError, match="augment.tokenadapt_p: must be in"):
        AugmentConfig(tokenadapt_p=1.5)
    assert AugmentConfig(tokenadapt_p=0.1).active


def test_mixup_or_cutmix_mixes_targets_by_the_partners_share():
    gen = torch.Generator().manual_seed(0)
    maps = torch.arange(4.0)[:, None, None, None].expand(4, 2, 4, 4).contiguous()
    targets = torch.eye(4)
    for _ in range(10):
        out, mixed = mixup_or_cutmix(maps, targets, gen)
        # each sample's mean value is its own value weighted by its own target share, plus its partner's
        assert torch.allclose(out.mean((1, 2, 3)), mixed @ torch.arange(4.0), atol=1e-5)
        assert torch.allclose(mixed.sum(1), torch.ones(4))
