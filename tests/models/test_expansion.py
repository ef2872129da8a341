"""Token expansion (models.expansion): the stage rule and token counts of the official code, seeds, the lowest-max-
cosine rule, the mean merge and its gradients, positions and prefix tokens, and when TokenViT applies it."""

import pytest
import torch
import torch.nn.functional as F

from tokenforge.errors import TokenforgeError
from tokenforge.models.expansion import ExpansionConfig, expand, seeds
from tokenforge.models.vit import ModelConfig, TokenViT, save_model

DEFAULT = ExpansionConfig()  # steps 0/10/20, keep 0.5/0.75/1.0, r0 0.25, 2 chunks, after block 0


def kept_after(config: ExpansionConfig, m: int, epoch: int, prefix: int = 1) -> int:
    """Tokens the blocks after `config.after` see at `epoch`, prefix included, for a sequence of m + prefix."""
    x, positions = torch.randn(2, prefix + m, 8), torch.arange(m).expand(2, -1)
    if not config.thins(epoch):
        return x.shape[1]
    y, pos = expand(x, positions, config, config.stage(epoch), prefix)
    assert pos.shape == (2, y.shape[1] - prefix)
    return y.shape[1]


# --- the schedule --------------------------------------------------------------------------------------------


def test_stage_is_bisect_right_of_the_epoch_within_the_task():
    assert [DEFAULT.stage(e) for e in (0, 9, 10, 19, 20, 29, 100)] == [0, 0, 1, 1, 2, 2, 2]
    late = ExpansionConfig(steps=(2, 5), keep=(0.5, 0.75))
    assert [late.stage(e) for e in (0, 1, 2, 5)] == [-1, -1, 0, 1]
    assert [late.thins(e) for e in (0, 1, 2, 5)] == [False, False, True, True]  # a last stage below 1.0 thins
    assert [DEFAULT.thins(e) for e in (0, 10, 20)] == [True, True, False]  # a stage keeping 1.0 does nothing


@pytest.mark.parametrize(
    "config, m, counts",
    [
        (DEFAULT, 196, [99, 99, 148, 197]),  # METHODS.md: 99/148/197 tokens with the class token
        (DEFAULT, 16, [9, 9, 13, 17]),
        # EfficientTrain's: per-stage rounding, 58 seeds + 58 + 39, not int(196 * 0.6) = 117 and int(196 * 0.8) = 156
        (ExpansionConfig(steps=(0, 10, 20), keep=(0.6, 0.8, 1.0), r0=0.3), 196, [117, 117, 156, 197]),
        (ExpansionConfig(steps=(0, 10, 20), keep=(0.5, 0.75, 0.9), r0=0.25, chunks=3), 196, [99, 99, 148, 177]),
    ],
)
def test_tokens_kept_at_each_stage_are_the_official_counts(config, m, counts):
    """Stage s adds int(M * (keep[s] - keep[s-1])) tokens; the last stage tops up to int(M * keep[-1]). Checked
    against the official `TokenSelect.token_select` (same kept indices in the same order, same merged values)."""
    assert [kept_after(config, m, e) for e in (0, 5, 10, 20)] == counts


def test_chunk_sizes_split_each_stage_with_the_remainder_last():
    assert DEFAULT.chunk_sizes(196, 0) == [24, 25]  # 49 tokens in 2 chunks
    assert DEFAULT.chunk_sizes(196, 1) == [24, 25, 24, 25]  # every stage so far, from the seeds again
    assert ExpansionConfig(steps=(0,), keep=(0.5,), chunks=5).chunk_sizes(196, 0) == [9, 9, 9, 9, 13]


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"steps": (0, 10, 10)}, "steps: must increase"),
        ({"steps": (-1, 10, 20)}, "steps: must be whole epochs"),
        ({"steps": (0, 10)}, "keep: one keep rate per stage"),
        ({"keep": (0.5, 0.4, 1.0)}, "keep: rates in (0, 1], non-decreasing"),
        ({"keep": (0.5, 0.75, 1.5)}, "keep: rates in (0, 1], non-decreasing"),
        ({"keep": (0.2, 0.75, 1.0)}, "keep: the first stage keeps at least the seeds"),
        ({"r0": 0.0}, "r0: must be in (0, 1]"),
        ({"chunks": 0}, "chunks: must be an integer >= 1"),
        ({"after": -1}, "after: must be a block index"),
    ],
)
def test_bad_settings_are_one_line_errors_naming_the_key(kwargs, key):
    with pytest.raises(TokenforgeError) as err:
        ExpansionConfig(**kwargs)
    assert f"train.token_expansion.{key}" in str(err.value) and "\n" not in str(err.value)


def test_after_must_leave_a_block_to_run():
    with pytest.raises(TokenforgeError, match=r"train.token_expansion.after: must be below the last block \(1 for depth 2\)"):
        model(depth=2).set_expansion(ExpansionConfig(after=1))
    model(depth=3).set_expansion(ExpansionConfig(after=1))


# --- selection and merge ---------------------------------------------------------------------------------------


def test_seeds_are_fixed_raster_indices():
    assert seeds(16, 0.25) == [0, 4, 8, 12]
    assert seeds(196, 0.25) == list(range(0, 196, 4))
    assert seeds(10, 0.3) == [0, 3, 6]  # int(10 * 0.3) of the multiples of int(1 // 0.3) = 3
    only_seeds = ExpansionConfig(steps=(0,), keep=(0.25,))
    x = torch.randn(3, 17, 8)
    _, pos = expand(x, torch.arange(16).expand(3, -1), only_seeds, 0, prefix=1)
    assert pos.tolist() == [[0, 4, 8, 12]] * 3  # whatever the data


def planted(m: int, novel: dict[int, torch.Tensor]) -> torch.Tensor:
    """(1, 1 + m, 4): a class token, then tokens along e0 (the seeds exactly, the others up to a little noise), with
    `novel` ones planted."""
    torch.manual_seed(0)
    tokens = torch.eye(4)[0] + 0.01 * torch.randn(m, 4)
    tokens[seeds(m, 0.25)] = torch.eye(4)[0]
    for i, t in novel.items():
        tokens[i] = t
    return torch.cat([torch.full((1, 4), 9.0), tokens])[None]


def test_the_token_least_like_the_selected_ones_joins():
    # 8 tokens, seeds 0 and 4; one token to add: the planted e2 one (cosine 0 to the seeds, the others about 1)
    config = ExpansionConfig(steps=(0,), keep=(0.375,), chunks=1)
    x = planted(8, {5: torch.tensor([0.0, 0.0, 1.0, 0.0])})
    _, pos = expand(x, torch.arange(8)[None], config, 0, prefix=1)
    assert pos.tolist() == [[0, 4, 5]]


def test_each_chunk_is_chosen_against_the_tokens_of_the_chunks_before():
    # two tokens to add: 5 and 6 point almost the same new way (cosine 0 and 0.05 to the seeds), 3 half-way
    # (0.71). Chosen at once (1 chunk), 5 and 6 join; in 2 chunks the second choice sees 5 already in, to which 6
    # is close (0.999), and takes 3.
    x = planted(8, {5: torch.tensor([0.0, 0.0, 1.0, 0.0]), 6: torch.tensor([0.05, 0.0, 1.0, 0.0]),
                    3: torch.tensor([0.7, 0.0, 0.0, 0.7])})
    one, two = (ExpansionConfig(steps=(0,), keep=(0.5,), chunks=k) for k in (1, 2))
    assert expand(x, torch.arange(8)[None], one, 0, prefix=1)[1].tolist() == [[0, 4, 5, 6]]
    assert expand(x, torch.arange(8)[None], two, 0, prefix=1)[1].tolist() == [[0, 4, 5, 3]]


def merge_case() -> tuple[torch.Tensor, ExpansionConfig]:
    """4 tokens, r0 0.5: seeds 0 and 2 stay, 1 and 3 are merged (both into 0, the more similar)."""
    tokens = torch.tensor([[1.0, 0.0], [2.0, 0.1], [0.0, 1.0], [3.0, 0.2]])
    return torch.cat([torch.tensor([[5.0, 5.0]]), tokens])[None], ExpansionConfig(steps=(0,), keep=(0.5,), r0=0.5)


def test_left_out_tokens_are_averaged_into_their_most_similar_kept_token():
    x, config = merge_case()
    y, pos = expand(x, torch.tensor([[7, 8, 9, 10]]), config, 0, prefix=1)
    expected = torch.tensor([[5.0, 5.0], [(1 + 2 + 3) / 3, (0 + 0.1 + 0.2) / 3], [0.0, 1.0]])
    torch.testing.assert_close(y[0], expected)  # a plain mean, the kept token included
    assert pos.tolist() == [[7, 9]]  # positions travel with the kept tokens


def test_gradients_flow_through_the_merge_to_the_left_out_tokens():
    x, config = merge_case()
    x.requires_grad_(True)
    y, _ = expand(x, torch.arange(4)[None], config, 0, prefix=1)
    (y * torch.tensor([1.0, 2.0])).sum().backward()
    third, weights = torch.tensor([1 / 3, 2 / 3]), torch.tensor([1.0, 2.0])
    torch.testing.assert_close(x.grad[0], torch.stack([weights, third, third, weights, third]))


def test_prefix_tokens_are_untouched_and_counted_apart():
    x = torch.randn(2, 3 + 16, 8)  # class token and 2 prompts
    y, pos = expand(x, torch.arange(16).expand(2, -1), DEFAULT, 0, prefix=3)
    assert torch.equal(y[:, :3], x[:, :3]) and y.shape == (2, 3 + 8, 8) and pos.shape == (2, 8)


def test_a_subset_is_thinned_by_its_own_length_and_keeps_its_positions():
    x, positions = torch.randn(2, 1 + 8, 8), torch.tensor([[1, 3, 5, 6, 9, 11, 14, 15], [0, 2, 4, 7, 8, 10, 12, 13]])
    y, pos = expand(x, positions, DEFAULT, 0, prefix=1)
    assert y.shape == (2, 1 + 4, 8)  # half of the subset's 8
    assert pos[:, :2].tolist() == [[1, 9], [0, 8]]  # the seeds: sequence indices 0 and 4
    assert all(set(p.tolist()) <= set(q.tolist()) for p, q in zip(pos, positions))


def test_too_short_for_a_seed_or_nothing_left_out_means_unchanged():
    x, positions = torch.randn(2, 1 + 3, 8), torch.arange(3).expand(2, -1)
    y, pos = expand(x, positions, DEFAULT, 0, prefix=1)  # int(3 * 0.25) = 0 seeds
    assert y is x and pos is positions


def test_expansion_is_deterministic():
    x = torch.randn(4, 1 + 196, 16)
    a = expand(x, torch.arange(196).expand(4, -1), DEFAULT, 1, prefix=1)
    b = expand(x.clone(), torch.arange(196).expand(4, -1), DEFAULT, 1, prefix=1)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


# --- in TokenViT -----------------------------------------------------------------------------------------------


def model(depth: int = 2, grid=(4, 4), prompts: int = 0) -> TokenViT:
    torch.manual_seed(0)
    config = ModelConfig(grid=grid, codebook_size=32, code_dim=8, num_classes=4, embed_dim=16, depth=depth, prompts=prompts)
    return TokenViT(config, torch.randn(32, 8))


def seen_by(block) -> list:
    """Record (sequence length, positions) of every call of `block`."""
    seen = []
    block.register_forward_pre_hook(lambda mod, args, kwargs: seen.append((args[0].shape[1], kwargs.get("positions"))),
                                    with_kwargs=True)
    return seen


@pytest.mark.parametrize("grid, lengths", [((4, 4), [9, 13, 17]), ((14, 14), [99, 148, 197])])
def test_the_model_thins_after_block_0_in_training_at_each_stage(grid, lengths):
    net = model(grid=grid).train()
    net.set_expansion(DEFAULT)
    first, second = seen_by(net.vit.blocks[0]), seen_by(net.vit.blocks[1])
    ids = torch.randint(0, 32, (2, *grid))
    for epoch in (0, 10, 20):
        net.set_epoch(epoch)
        net(ids)
    assert [n for n, _ in first] == [1 + grid[0] * grid[1]] * 3
    assert [n for n, _ in second] == lengths
    assert second[0][1][:, : len(seeds(grid[0] * grid[1], 0.25))].tolist() == [seeds(grid[0] * grid[1], 0.25)] * 2


def test_the_model_keeps_every_token_in_eval_mode_under_no_grad_and_in_a_probe():
    net = model().train()
    ids = torch.randint(0, 32, (2, 4, 4))
    whole = net(ids)
    with net.probe(attention=True):
        probed = net(ids)  # unfused attention: its own bits
    net.set_expansion(DEFAULT)
    assert net(ids).shape == whole.shape and not torch.equal(net(ids), whole)  # training with gradients: thinned
    with torch.no_grad():
        assert torch.equal(net(ids), whole)
    with net.probe(attention=True):
        assert torch.equal(net(ids), probed)  # attribution reads every token
    assert torch.equal(net.eval()(ids), whole)


def test_prompts_pass_untouched_and_subsets_are_thinned_in_the_model():
    net = model(prompts=2).train()
    net.set_expansion(DEFAULT)
    second = seen_by(net.vit.blocks[1])
    positions = torch.tensor([[0, 2, 4, 6, 8, 10, 12, 14]] * 3)
    net(torch.randint(0, 32, (3, 8)), positions)
    length, pos = second[0]
    assert length == 3 + 4 and pos[:, :2].tolist() == [[0, 8]] * 3


@pytest.mark.parametrize("kind", ["full", "subset"])
def test_activation_checkpointing_with_expansion_gives_the_same_gradients(kind):
    ids, y, pos = torch.randint(0, 32, (3, 4, 4)), torch.tensor([0, 1, 2]), torch.tensor([[0, 3, 5, 6, 9, 11, 12, 15]] * 3)
    grads = []
    for checkpointing in (False, True):
        net = model(depth=3).train()
        net.set_expansion(ExpansionConfig(after=1))
        net.vit.set_grad_checkpointing(checkpointing)
        logits = net(ids) if kind == "full" else net(ids.flatten(1).gather(1, pos), pos)
        F.cross_entropy(logits, y).backward()
        grads.append({k: p.grad for k, p in net.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    assert all(torch.equal(grads[0][k], grads[1][k]) for k in grads[0])


def test_expansion_is_not_part_of_the_saved_model(tmp_path):
    plain, thinned = model(), model()
    thinned.set_expansion(DEFAULT)
    thinned.set_epoch(3)
    save_model(plain, tmp_path / "a")
    save_model(thinned, tmp_path / "b")
    for name in ("model.safetensors", "model.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_the_memory_is_scored_by_a_model_without_expansion():
    from tokenforge.families.vit_start import plain_model

    net = model()
    net.set_expansion(DEFAULT)
    assert plain_model(net, torch.device("cpu")).expansion is None
