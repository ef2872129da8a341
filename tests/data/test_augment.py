"""Token augmentations: config validation, synonyms loading, and each augmentation's invariants."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tokenforge.data.augment import (
    AugmentConfig,
    TokenAugmenter,
    _crop_resize,
    _flip,
    horizontal_flip,
    load_synonyms,
    random_resized_crop,
    square_pairs,
    square_side,
    swap_squares,
)
from tokenforge.errors import TokenforgeError
from tokenforge.tokenizer.synonyms import nearest_codes, synonyms_json

K, D, B, H, W, C = 12, 4, 6, 5, 6, 6


pytestmark = pytest.mark.usefixtures("one_thread")


def codebook() -> torch.Tensor:
    return torch.randn(K, D, generator=torch.Generator().manual_seed(1))


def synonyms(k: int = 3) -> torch.Tensor:
    """Row i: the codes i+1, i+2, ... (mod K): never i itself."""
    return (torch.arange(K)[:, None] + torch.arange(1, k + 1)[None, :]) % K


def batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(K, (B, H, W), generator=gen)
    return ids, F.one_hot(torch.arange(B) % C, C).float()


def augmenter(seed: int = 0, **settings) -> TokenAugmenter:
    return TokenAugmenter(AugmentConfig(synonym_k=3, **settings), codebook(), synonyms(), seed)


def lookup(ids: torch.Tensor) -> torch.Tensor:
    return codebook()[ids].permute(0, 3, 1, 2)


ALL_ON = dict(synonym_p=1.0, swap_p=1.0, crop_p=1.0, flip_p=1.0, noise_p=1.0, cutmix_p=1.0, coloradapt_p=1.0)
ONE_EACH = [{name: 1.0} for name in ALL_ON]


# ---------------------------------------------------------------------------------- config


def test_default_config_is_inactive_and_the_identity():
    aug = augmenter()
    ids, targets = batch()
    assert not aug.active and not AugmentConfig().active
    assert torch.equal(aug.augment_ids(ids), ids)
    emb, out_targets = aug.embed(ids, targets)
    assert emb.dtype == torch.float32 and torch.equal(emb, lookup(ids))
    assert torch.equal(out_targets, targets)


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"synonym_p": 1.5}, r"augment.synonym_p: must be in \[0, 1\], got 1.5"),
        ({"cutmix_p": -0.1}, r"augment.cutmix_p: must be in \[0, 1\]"),
        ({"flip_p": "half"}, r"augment.flip_p: must be a number"),
        ({"crop_scale": (0.0, 1.0)}, r"augment.crop_scale: must satisfy 0 < low <= high <= 1"),
        ({"crop_scale": (0.8, 0.5)}, r"augment.crop_scale: must satisfy"),
        ({"crop_scale": 0.5}, r"augment.crop_scale: must be a pair"),
        ({"synonym_k": 0}, r"augment.synonym_k: must be an integer >= 1"),
        ({"swap_fraction": 0.0}, r"augment.swap_fraction: must be in \(0, 1\]"),
        ({"noise_std": -1.0}, r"augment.noise_std: must be >= 0"),
        ({"cutmix_alpha": 0.0}, r"augment.cutmix_alpha: must be > 0"),
    ],
)
def test_bad_config_names_the_field(settings, message):
    with pytest.raises(TokenforgeError, match=message):
        AugmentConfig(**settings)


def test_from_dict():
    cfg = AugmentConfig.from_dict({"flip_p": 0.5, "crop_scale": [0.3, 0.9]})
    assert cfg.flip_p == 0.5 and cfg.crop_scale == (0.3, 0.9) and cfg.active
    assert AugmentConfig.from_dict(None) == AugmentConfig()
    with pytest.raises(TokenforgeError, match="augment: unknown key.* flipp, mixup"):
        AugmentConfig.from_dict({"flipp": 0.5, "mixup": 1.0})


def test_synonyms_needed_and_checked():
    with pytest.raises(TokenforgeError, match="augment.synonym_p: > 0 needs a synonyms table"):
        TokenAugmenter(AugmentConfig(synonym_p=0.5), codebook(), None, 0)
    with pytest.raises(TokenforgeError, match=r"synonyms: expected \(12, >= 5\)"):
        TokenAugmenter(AugmentConfig(synonym_p=0.5), codebook(), synonyms(3), 0)
    with pytest.raises(TokenforgeError, match=r"synonyms: ids out of range \[0, 12\)"):
        TokenAugmenter(AugmentConfig(synonym_p=0.5, synonym_k=3), codebook(), synonyms(3) + K, 0)


def test_bad_ids():
    ids, targets = batch()
    with pytest.raises(TokenforgeError, match=r"augment: ids out of range \[0, 12\)"):
        augmenter().embed(ids + K, targets)
    with pytest.raises(TokenforgeError, match="augment: ids must be an integer"):
        augmenter().augment_ids(ids.float())
    with pytest.raises(TokenforgeError, match="augment: targets must be"):
        augmenter().embed(ids, targets[:2])


# -------------------------------------------------------------------------------- synonyms file


def test_load_synonyms_round_trip(tmp_path):
    table = nearest_codes(np.random.default_rng(0).normal(size=(K, D)), 5)
    path = tmp_path / "synonyms.json"
    path.write_text(synonyms_json(table))
    loaded = load_synonyms(path, 3)
    assert loaded.dtype == torch.int64 and loaded.tolist() == table[:, :3].tolist()


@pytest.mark.parametrize(
    "content, message",
    [
        ({"0": [1], "1": [2]}, r"code 1: id 2 out of range \[0, 2\)"),
        ({"0": [1], "2": [0]}, r"keys must be the code ids 0..1"),
        ({"0": [1], "1": "0"}, r"code 1: expected a list of integer ids"),
        ({"0": [1], "1": []}, r"code 1: has 0 synonyms, 1 needed"),
        ([[1], [0]], r"expected a non-empty mapping"),
    ],
)
def test_load_synonyms_bad_content_names_the_file(tmp_path, content, message):
    path = tmp_path / "syn.json"
    path.write_text(json.dumps(content))
    with pytest.raises(TokenforgeError, match=f"syn.json: {message}"):
        load_synonyms(path, 1)


def test_load_synonyms_not_json(tmp_path):
    path = tmp_path / "syn.json"
    path.write_text("{not json")
    with pytest.raises(TokenforgeError, match="syn.json: not valid JSON"):
        load_synonyms(path, 1)


# ------------------------------------------------------------------------------ every augmentation


@pytest.mark.parametrize("settings", ONE_EACH + [ALL_ON], ids=[*ALL_ON, "all"])
def test_shapes_dtypes_range_and_change(settings):
    ids, targets = batch()
    aug = augmenter(**settings)
    assert aug.active
    new_ids = aug.augment_ids(ids)
    assert new_ids.shape == ids.shape and new_ids.dtype == torch.int64
    assert 0 <= int(new_ids.min()) and int(new_ids.max()) < K
    emb, new_targets = aug.embed(new_ids, targets)
    assert emb.shape == (B, D, H, W) and emb.dtype == torch.float32
    assert new_targets.shape == (B, C) and new_targets.dtype == torch.float32
    assert torch.allclose(new_targets.sum(1), torch.ones(B))
    same = torch.equal(new_ids, ids) and torch.equal(emb, lookup(ids)) and torch.equal(new_targets, targets)
    assert not same


@pytest.mark.parametrize("settings", ONE_EACH + [ALL_ON], ids=[*ALL_ON, "all"])
def test_deterministic_for_a_seed(settings):
    ids, targets = batch()

    def run(seed):
        # probability 1/2 so that even flip depends on the seed
        aug = augmenter(seed, **{name: 0.5 for name in settings})
        return [aug.embed(aug.augment_ids(ids), targets) for _ in range(2)]  # two batches in a row

    first, again, other = run(7), run(7), run(8)
    for (e1, t1), (e2, t2) in zip(first, again):
        assert torch.equal(e1, e2) and torch.equal(t1, t2)
    assert any(not torch.equal(e1, e3) for (e1, _), (e3, _) in zip(first, other))


def test_integer_ids_of_other_dtypes_are_accepted():
    ids, targets = batch()
    emb, _ = augmenter().embed(ids.to(torch.int16), targets)
    assert torch.equal(emb, lookup(ids))


# -------------------------------------------------------------------------------- synonym replacement


def test_synonyms_come_from_the_tokens_own_row():
    ids, _ = batch()
    table = synonyms()
    new = augmenter(synonym_p=1.0, synonym_token_p=0.5).augment_ids(ids)
    replaced = new != ids
    assert 0 < replaced.float().mean() < 1  # about half the tokens
    assert (table[ids[replaced]] == new[replaced][:, None]).any(1).all()


def test_synonym_token_probabilities():
    ids, _ = batch()
    assert torch.equal(augmenter(synonym_p=1.0, synonym_token_p=0.0).augment_ids(ids), ids)
    assert (augmenter(synonym_p=1.0, synonym_token_p=1.0).augment_ids(ids) != ids).all()  # no code is its own synonym
    # synonym_p is per sample: each sample is either wholly replaced (token_p 1) or untouched
    ids40 = torch.randint(K, (40, H, W), generator=torch.Generator().manual_seed(5))
    changed = (augmenter(synonym_p=0.5, synonym_token_p=1.0, seed=3).augment_ids(ids40) != ids40).flatten(1)
    assert (changed.all(1) | ~changed.any(1)).all() and 0 < changed.all(1).sum() < 40


# ---------------------------------------------------------------------------------------- swap


def test_swap_keeps_each_samples_ids_and_moves_two_squares():
    ids, _ = batch()
    new = augmenter(swap_p=1.0, swap_fraction=0.4).augment_ids(ids)
    side = square_side(H, W, 0.4)
    assert side == 2
    for before, after in zip(ids, new):
        assert sorted(before.flatten().tolist()) == sorted(after.flatten().tolist())
        assert int((before != after).sum()) <= 2 * side * side
    assert not torch.equal(new, ids)


def test_swap_exchanges_square_contents():
    ids = torch.arange(16).view(1, 4, 4)  # all distinct: the moved cells show the squares
    new = swap_squares(ids, 1.0, 0.5, torch.Generator().manual_seed(0))[0]
    moved = (new != ids[0]).nonzero()
    assert len(moved) == 8  # two 2x2 squares
    for y, x in moved.tolist():
        sy, sx = divmod(int(new[y, x]), 4)
        assert int(new[sy, sx]) == int(ids[0, y, x])  # the cell it came from got this cell's id


@pytest.mark.parametrize(
    "shape, fraction, side",
    [((1, 1), 0.5, 0), ((1, 4), 1.0, 1), ((4, 4), 0.01, 1), ((32, 32), 0.25, 8), ((3, 3), 1.0, 1), ((4, 8), 1.0, 4)],
)
def test_square_side(shape, fraction, side):
    assert square_side(*shape, fraction) == side


def test_swap_on_a_single_token_grid_is_the_identity():
    ids = torch.randint(K, (3, 1, 1))
    assert torch.equal(swap_squares(ids, 1.0, 1.0, torch.Generator().manual_seed(0)), ids)


# --------------------------------------------------------------------------------- crop and flip


def test_flip_twice_is_the_identity():
    maps = torch.randn(B, D, H, W)
    mask = torch.tensor([True, False, True, True, False, False])
    once = _flip(maps, mask)
    assert torch.equal(once[mask], maps[mask].flip(-1)) and torch.equal(once[~mask], maps[~mask])
    assert torch.equal(_flip(once, mask), maps)


def test_flip_is_the_flipped_lookup():
    ids, targets = batch()
    emb, _ = augmenter(flip_p=1.0).embed(ids, targets)
    assert torch.equal(emb, lookup(ids.flip(-1)))


def test_crop_and_flip_of_embeddings_equal_seits_one_hot_route():
    # SeiT: one-hot (B, K, h, w) -> crop -> flip -> lookup as a matmul. We crop/flip the embedding map instead.
    ids, targets = batch()
    emb, _ = augmenter(5, crop_p=0.7, flip_p=0.5, crop_scale=(0.2, 0.9)).embed(ids, targets)
    gen = torch.Generator().manual_seed(5)
    maps = F.one_hot(ids, K).permute(0, 3, 1, 2).float()
    maps = horizontal_flip(random_resized_crop(maps, 0.7, (0.2, 0.9), gen), 0.5, gen)
    assert torch.allclose(emb, torch.einsum("bkhw,kd->bdhw", maps, codebook()), atol=1e-5)
    assert not torch.allclose(emb, lookup(ids), atol=1e-3)


def test_full_crop_is_the_identity():
    ids, targets = batch()
    emb, _ = augmenter(crop_p=1.0, crop_scale=(1.0, 1.0)).embed(ids, targets)
    assert torch.allclose(emb, lookup(ids), atol=1e-6)
    maps = torch.randn(B, D, H, W, dtype=torch.float64)
    assert torch.equal(_crop_resize(maps, torch.tensor([[0.0, 0.0, 1.0, 1.0]] * B, dtype=torch.float64)), maps)


def test_crop_makes_soft_code_mixtures():
    ids, targets = batch()
    aug = augmenter(crop_p=1.0, crop_scale=(0.2, 0.3))
    maps = F.one_hot(ids, K).permute(0, 3, 1, 2).float()
    cropped = random_resized_crop(maps, 1.0, (0.2, 0.3), aug.generator)
    assert torch.allclose(cropped.sum(1), torch.ones(B, H, W))  # still a distribution over codes per cell
    assert (cropped >= 0).all() and ((cropped > 0) & (cropped < 1)).any()
    # the top-left quarter, upsampled: the corner cell is exactly the original corner code
    quarter = _crop_resize(maps, torch.tensor([[0.0, 0.0, 0.5, 0.5]] * B, dtype=torch.float64))
    assert torch.equal(quarter[:, :, 0, 0], maps[:, :, 0, 0])


def test_crop_of_a_constant_grid_stays_constant():
    ids = torch.full((2, H, W), 3)
    emb, _ = augmenter(crop_p=1.0, crop_scale=(0.1, 0.5)).embed(ids, torch.eye(2))
    assert torch.allclose(emb, lookup(ids), atol=1e-6)


# ----------------------------------------------------------------------------------------- noise


def test_noise_changes_embeddings_but_not_shape():
    ids, targets = batch()
    emb, out_targets = augmenter(noise_p=1.0, noise_std=0.1).embed(ids, targets)
    clean = lookup(ids)
    assert emb.shape == clean.shape and (emb != clean).all()
    assert torch.equal(out_targets, targets)
    # about noise_std of the codebook's spread, per channel (offset + element: sqrt(2) * 0.1)
    spread = ((emb - clean).std() / codebook().std(0).mean()).item()
    assert 0.05 < spread < 0.3
    same, _ = augmenter(noise_p=1.0, noise_std=0.0).embed(ids, targets)
    assert torch.equal(same, clean)


# ---------------------------------------------------------------------------------------- cutmix


def test_cutmix_mixes_two_classes_by_pasted_area():
    ids = torch.arange(B)[:, None, None].expand(B, H, W).clone()  # sample i is all code i: pasted cells show
    targets = torch.eye(B)
    for seed in range(5):
        emb, mixed = augmenter(seed, cutmix_p=1.0).embed(ids, targets)
        assert torch.allclose(mixed.sum(1), torch.ones(B))
        for i in range(B):
            classes = (mixed[i] > 0).nonzero().flatten().tolist()
            own = (emb[i] == lookup(ids)[i]).all(0)  # (H, W): cells still from sample i
            area = 1.0 - own.float().mean().item()
            assert i in classes and len(classes) <= 2
            assert mixed[i, i].item() == pytest.approx(1.0 - area)
            if area > 0:
                (partner,) = [c for c in classes if c != i]
                assert (emb[i][:, ~own] == codebook()[partner][:, None]).all()
                assert mixed[i, partner].item() == pytest.approx(area)


def test_cutmix_of_one_sample_is_the_identity():
    ids, targets = batch()
    emb, mixed = augmenter(cutmix_p=1.0).embed(ids[:1], targets[:1])
    assert torch.equal(emb, lookup(ids[:1])) and torch.equal(mixed, targets[:1])


# ------------------------------------------------------------------------------------ coloradapt


def test_coloradapt_takes_a_partners_channel_statistics():
    ids, targets = batch()
    clean = lookup(ids)
    emb, out_targets = augmenter(coloradapt_p=1.0).embed(ids, targets)
    assert torch.equal(out_targets, targets)
    mean, std = clean.mean((2, 3)), clean.std((2, 3), unbiased=False)
    new_mean, new_std = emb.mean((2, 3)), emb.std((2, 3), unbiased=False)
    partners = []
    for i in range(B):
        match = [
            j
            for j in range(B)
            if torch.allclose(new_mean[i], mean[j], atol=1e-4) and torch.allclose(new_std[i], std[j], atol=1e-3)
        ]
        assert len(match) == 1 and match[0] != i
        partners.append(match[0])
    assert sorted(partners) == list(range(B))  # every sample lends its statistics to exactly one other


def test_coloradapt_keeps_the_normalised_pattern():
    ids, targets = batch()
    clean = lookup(ids)
    emb, _ = augmenter(coloradapt_p=1.0).embed(ids, targets)

    def normalised(x):
        return (x - x.mean((2, 3), keepdim=True)) / x.std((2, 3), keepdim=True)

    assert torch.allclose(normalised(emb), normalised(clean), atol=1e-3)


def test_square_pairs_are_uniform_over_valid_pairs():
    # 3x4 grid, 2x2 squares: corners (0..1, 0..2), 6 of them; a pair is valid if apart by 2 along some axis.
    pairs = square_pairs(6000, 3, 4, 2, torch.Generator().manual_seed(0))
    dist = (pairs[:, :2] - pairs[:, 2:]).abs()
    assert ((dist >= 2).any(1)).all()
    counts = torch.unique(pairs, dim=0, return_counts=True)[1]
    assert len(counts) == 8  # (y, 0) with (y', 2) for all y, y', both orders
    assert counts.min() > 600 and counts.max() < 900  # 750 each expected


def test_swap_on_a_seit_sized_grid():
    ids = torch.randint(391, (4, 32, 32), generator=torch.Generator().manual_seed(0))
    new = swap_squares(ids, 1.0, 0.25, torch.Generator().manual_seed(0))
    for before, after in zip(ids, new):
        assert torch.equal(before.flatten().sort().values, after.flatten().sort().values)
        assert 0 < int((before != after).sum()) <= 2 * 8 * 8
