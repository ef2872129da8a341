"""The word-level text tokenizer and its helpers: trained, saved and loaded offline, on tiny texts."""

import socket

import pytest
import torch

from tokenforge.errors import TokenforgeError
from tokenforge.families import text

TEXTS = [
    "What color is the cube?",
    "What shape is the red   thing?",
    "A red cube left of a blue sphere.",
    "how many spheres are there?",
]


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("the text tokenizer tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture(scope="module")
def tok():
    return text.train_word_tokenizer(TEXTS)


def test_training_is_deterministic(tmp_path):
    text.train_word_tokenizer(TEXTS, out=tmp_path / "a")
    text.train_word_tokenizer(list(TEXTS), out=tmp_path / "b")
    a, b = (tmp_path / "a" / "tokenizer.json").read_bytes(), (tmp_path / "b" / "tokenizer.json").read_bytes()
    assert a == b


def test_special_token_ids_are_fixed(tok):
    for i, token in enumerate(["[PAD]", "[UNK]", "[BOS]", "[SEP]", "[CLS]", "[MASK]"]):
        assert tok.convert_tokens_to_ids(token) == i
    assert text.special_ids(tok) == {"pad": 0, "unk": 1, "bos": 2, "eos": 3, "sep": 3, "cls": 4, "mask": 5}


def test_vocabulary_is_lowercased_words_and_punctuation(tok):
    vocab = tok.get_vocab()
    assert {"what", "red", "cube", "?", "."} <= set(vocab)
    assert "What" not in vocab and "cube?" not in vocab
    # the most frequent words come first after the 6 specials: "?" (3), "red" / "the" / "what" / "is" (2)
    assert vocab["?"] == 6


def test_min_frequency_and_max_vocab():
    small = text.train_word_tokenizer(TEXTS, min_frequency=2)
    assert "sphere" not in small.get_vocab() and "red" in small.get_vocab()
    capped = text.train_word_tokenizer(TEXTS, max_vocab=8)
    assert len(capped.get_vocab()) == 8
    with pytest.raises(TokenforgeError, match="max_vocab"):
        text.train_word_tokenizer(TEXTS, max_vocab=6)
    with pytest.raises(TokenforgeError, match="no training texts"):
        text.train_word_tokenizer([])


def test_unknown_word_is_unk(tok):
    ids, _ = text.encode_batch(tok, ["zebra cube"], 4, add_bos=False, add_eos=False)
    assert ids[0].tolist() == [1, tok.convert_tokens_to_ids("cube"), 0, 0]


def test_encode_batch_pads_truncates_and_adds_bos_eos(tok):
    what, color, cube = (tok.convert_tokens_to_ids(w) for w in ("what", "color", "cube"))
    ids, mask = text.encode_batch(tok, ["What color", "cube", ""], 5, add_bos=True, add_eos=True)
    assert ids.dtype == mask.dtype == torch.long and ids.shape == mask.shape == (3, 5)
    assert ids.tolist() == [[2, what, color, 3, 0], [2, cube, 3, 0, 0], [2, 3, 0, 0, 0]]
    assert mask.tolist() == [[1, 1, 1, 1, 0], [1, 1, 1, 0, 0], [1, 1, 0, 0, 0]]

    # too long: words are cut at the end, bos and eos kept
    ids, mask = text.encode_batch(tok, ["what color is the cube ?"], 4, add_bos=True, add_eos=True)
    assert ids.tolist() == [[2, what, color, 3]] and mask.tolist() == [[1, 1, 1, 1]]
    ids, _ = text.encode_batch(tok, ["what color is the cube ?"], 3, add_bos=False, add_eos=False)
    assert ids[0, 0] == what and ids.shape == (1, 3)
    ids, _ = text.encode_batch(tok, ["what color"], 3, add_bos=False, add_eos=True)
    assert ids.tolist() == [[what, color, 3]]

    # deterministic
    a = text.encode_batch(tok, TEXTS, 12, add_bos=True, add_eos=True)
    b = text.encode_batch(tok, TEXTS, 12, add_bos=True, add_eos=True)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])

    with pytest.raises(TokenforgeError, match="max_length"):
        text.encode_batch(tok, ["cube"], 1, add_bos=True, add_eos=True)


def test_decode_strips_specials_and_stops_at_eos(tok):
    ids, _ = text.encode_batch(tok, ["What color is the cube?", "a cube."], 10, add_bos=True, add_eos=True)
    assert text.decode(tok, ids) == ["what color is the cube ?", "a cube ."]
    assert text.decode(tok, ids[1]) == ["a cube ."]  # one sequence
    # an unknown word decodes to nothing: [UNK] is a special token
    unknown, _ = text.encode_batch(tok, ["What color is it?"], 10, add_bos=True, add_eos=True)
    assert text.decode(tok, unknown) == ["what color is ?"]
    cube, sphere = tok.convert_tokens_to_ids("cube"), tok.convert_tokens_to_ids("sphere")
    # whatever follows the first eos is not text
    assert text.decode(tok, [[2, cube, 3, sphere, 0], [cube, 1, 0, 0, 0]]) == ["cube", "cube"]


def test_normalize_text():
    assert text.normalize_text("  A Red\tcube\n\nleft  ") == "a red cube left"


def test_save_and_load_round_trip(tmp_path, tok, no_network):
    text.train_word_tokenizer(TEXTS, out=tmp_path / "tok")
    loaded = text.load_text_tokenizer(tmp_path / "tok")
    assert loaded.get_vocab() == tok.get_vocab()
    assert text.special_ids(loaded) == text.special_ids(tok)
    a = text.encode_batch(tok, TEXTS, 12, add_bos=True, add_eos=True)
    b = text.encode_batch(loaded, TEXTS, 12, add_bos=True, add_eos=True)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def bert_style_folder(path):
    """A user's BERT-style tokenizer saved with save_pretrained: WordPiece, [CLS] ... [SEP] added automatically,
    no bos or eos token."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "what", "color", "is", "it", "?", "cub", "##e", "red"]
    backend = Tokenizer(models.WordPiece({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.post_processor = processors.BertProcessing(("[SEP]", 3), ("[CLS]", 2))
    backend.decoder = decoders.WordPiece()
    user = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )
    user.save_pretrained(str(path))
    return path


def test_load_a_users_bert_style_tokenizer(tmp_path, no_network):
    user = text.load_text_tokenizer(bert_style_folder(tmp_path / "bert"))
    ids_of = text.special_ids(user)
    # no bos / eos tokens: bos falls back to [CLS], eos to [SEP]
    assert ids_of == {"pad": 0, "unk": 1, "bos": 2, "eos": 3, "sep": 3, "cls": 2, "mask": 4}
    ids, mask = text.encode_batch(user, ["What color is it?", "red cube"], 7, add_bos=True, add_eos=True)
    # the tokenizer's own [CLS] ... [SEP] are not added on top of ours; "cube" is the word pieces cub ##e
    assert ids.tolist() == [[2, 5, 6, 7, 8, 9, 3], [2, 12, 10, 11, 3, 0, 0]]
    assert mask.tolist() == [[1] * 7, [1, 1, 1, 1, 1, 0, 0]]
    # WordPiece's decoder glues "?" to "it"; decode gives our style: punctuation as a word of its own
    assert text.decode(user, ids) == ["what color is it ?", "red cube"]


def test_missing_or_broken_folder_is_a_tokenforge_error(tmp_path, no_network):
    missing = tmp_path / "no-such-tokenizer"
    with pytest.raises(TokenforgeError, match="no-such-tokenizer"):
        text.load_text_tokenizer(missing)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "tokenizer.json").write_text("{not json")
    with pytest.raises(TokenforgeError, match="broken"):
        text.load_text_tokenizer(broken)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(TokenforgeError, match="empty"):
        text.load_text_tokenizer(empty)


def test_loads_a_folder_whose_config_names_an_unknown_class(tmp_path, no_network):
    # e.g. saved by another transformers version: tokenizer.json is read by the generic fast tokenizer
    import json

    folder = tmp_path / "tok"
    text.train_word_tokenizer(TEXTS, out=folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["tokenizer_class"] = "NoSuchTokenizerFast"
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    loaded = text.load_text_tokenizer(folder)
    assert text.special_ids(loaded)["eos"] == 3 and "cube" in loaded.get_vocab()
