"""The text side of the multimodal families (VQA, captioning): a word-level tokenizer, and helpers that turn
a batch of texts into padded id tensors and generated ids back into text.

Why word-level: our questions, answers and captions (CLEVR-style scenes, small caption sets) use a few hundred
to a few thousand distinct words, so a word vocabulary trained on the run's own texts is small, exact and
readable, and needs nothing from the network. It is trained with the `tokenizers` library and wrapped in a
`transformers` fast tokenizer so BLIP (and `save_pretrained` / `from_pretrained`) can use it as is. A user's
own local tokenizer folder (e.g. a BLIP/BERT tokenizer saved with `save_pretrained`) loads through the same
`load_text_tokenizer` and works with the same helpers.

Our tokenizer:

- normalizer: NFKC, then lowercase ("Red" and "red" are one word);
- pre-tokenizer: BERT's, i.e. split on whitespace and make every punctuation character its own word
  ("what color is it?" -> what / color / is / it / ?, "dog's" -> dog / ' / s);
- special tokens, always first and always these ids: [PAD]=0, [UNK]=1, [BOS]=2, [SEP]=3 (end of sequence),
  [CLS]=4, [MASK]=5; then the words by decreasing count, ties in code-point order of the word (the
  `WordLevelTrainer`'s order), so the same texts always give the same tokenizer.json bytes;
- no post-processor: nothing is added to an encoding automatically. `encode_batch` adds [BOS] / [SEP] when the
  caller asks, so the same tokenizer serves a question encoder (no BOS) and a caption decoder (BOS ... SEP).

A word not in the vocabulary encodes to [UNK]. Decoding joins words with single spaces, so punctuation stays a
separate word: "what color is it ?" (see `decode`).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from tokenforge.errors import TokenforgeError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

PAD, UNK, BOS, SEP, CLS, MASK = "[PAD]", "[UNK]", "[BOS]", "[SEP]", "[CLS]", "[MASK]"
# The special tokens of our tokenizer in id order: [PAD] is 0, ..., [MASK] is 5.
SPECIAL_TOKENS = (PAD, UNK, BOS, SEP, CLS, MASK)

_SPACES = re.compile(r"\s+")
_PUNCT = re.compile(r"([^\w\s])")  # a punctuation (or symbol) character: a word of its own in `decode`


def normalize_text(s: str) -> str:
    """`s` lowercased with runs of whitespace (spaces, tabs, newlines) made one space and the ends stripped:
    how captions and answers are cleaned before tokenizer training and before the text metrics."""
    return _SPACES.sub(" ", s).strip().lower()


def _checked_texts(texts: Iterable[str], min_frequency: int, max_vocab: int | None) -> list[str]:
    """The training texts as a list, after checking them and the settings (one-line errors)."""
    if isinstance(texts, str):
        raise TokenforgeError("text tokenizer: texts must be a list of strings, not one string")
    if min_frequency < 1:
        raise TokenforgeError(f"text tokenizer: min_frequency must be at least 1, got {min_frequency}")
    if max_vocab is not None and max_vocab <= len(SPECIAL_TOKENS):
        raise TokenforgeError(
            f"text tokenizer: max_vocab must be more than the {len(SPECIAL_TOKENS)} special tokens, got {max_vocab}"
        )
    texts = list(texts)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TokenforgeError(f"text tokenizer: training text {i} is a {type(text).__name__}, not a string")
    if not any(text.strip() for text in texts):
        raise TokenforgeError("text tokenizer: no training texts (all empty or none given)")

    return texts


def train_word_tokenizer(
    texts: Iterable[str],
    out: Path | None = None,
    min_frequency: int = 1,
    max_vocab: int | None = None,
) -> PreTrainedTokenizerFast:
    """A word-level tokenizer trained on `texts` (see the module docstring), saved to the folder `out`
    (`save_pretrained`: tokenizer.json, tokenizer_config.json) when given.

    `min_frequency`: a word seen fewer times is left out (encodes to [UNK]). `max_vocab`: the most tokens in
    the vocabulary, the 6 special tokens included; the most frequent words are kept. None: no limit.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = _checked_texts(texts, min_frequency, max_vocab)
    tokenizer = Tokenizer(models.WordLevel(unk_token=UNK))
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordLevelTrainer(
        vocab_size=max_vocab if max_vocab is not None else 2**31 - 1,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    for i, token in enumerate(SPECIAL_TOKENS):  # the trainer's contract; checked so a change cannot go unseen
        if tokenizer.token_to_id(token) != i:
            raise TokenforgeError(f"text tokenizer: special token {token} did not get id {i}")

    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token=PAD,
        unk_token=UNK,
        bos_token=BOS,
        eos_token=SEP,
        sep_token=SEP,
        cls_token=CLS,
        mask_token=MASK,
    )
    if out is not None:
        out = Path(out)
        try:
            out.mkdir(parents=True, exist_ok=True)
            wrapped.save_pretrained(str(out))
        except OSError as e:
            raise TokenforgeError(f"{out}: cannot save the text tokenizer: {e.strerror or e}") from None
    return wrapped


def load_text_tokenizer(path: Path) -> PreTrainedTokenizerFast:
    """The tokenizer saved in the folder `path`: one of ours, or a user's local tokenizer folder (e.g. a
    BLIP/BERT tokenizer saved with `save_pretrained`). Only local files are read (`local_files_only=True`,
    and `path` must be an existing folder, so it is never taken for a Hub model id): no network access."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    path = Path(path)
    if not path.is_dir():
        raise TokenforgeError(f"{path}: text tokenizer folder not found")
    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as e:  # noqa: BLE001 - transformers raises many kinds; say which folder failed
        first = e
    # A folder with a tokenizer.json whose tokenizer_config.json names a class this transformers version
    # does not know (e.g. saved by a newer one): the generic fast tokenizer reads it.
    if (path / "tokenizer.json").is_file():
        with contextlib.suppress(Exception):  # the first error is the one to report
            return PreTrainedTokenizerFast.from_pretrained(str(path), local_files_only=True)
    message = " ".join(str(first).split()) or type(first).__name__  # one line
    if len(message) > 300:
        message = message[:297] + "..."
    raise TokenforgeError(f"{path}: cannot load the text tokenizer: {message}")


def special_ids(tokenizer: Any) -> dict[str, int | None]:
    """The ids of the special tokens the text models use: "pad", "unk", "bos", "eos", "sep", "cls", "mask".

    Ours: pad 0, unk 1, bos 2, eos = sep 3, cls 4, mask 5. A BERT-style tokenizer has [CLS] and [SEP] but no
    BOS/EOS token, so the fallbacks are bos = cls and eos = sep (how BERT-based decoders such as BLIP's start
    and end a text when no dedicated token exists); likewise sep = eos and cls = bos when only the other exists.
    "pad", "bos" and "eos" must resolve (a TokenforgeError otherwise); "unk" and "mask" are None when the
    tokenizer has none.
    """
    def get(name: str) -> int | None:
        value = getattr(tokenizer, f"{name}_token_id", None)
        return int(value) if value is not None else None

    ids = {name: get(name) for name in ("pad", "unk", "bos", "eos", "sep", "cls", "mask")}
    if ids["bos"] is None:
        ids["bos"] = ids["cls"]
    if ids["eos"] is None:
        ids["eos"] = ids["sep"]
    if ids["sep"] is None:
        ids["sep"] = ids["eos"]
    if ids["cls"] is None:
        ids["cls"] = ids["bos"]
    missing = [name for name in ("pad", "bos", "eos") if ids[name] is None]
    if missing:
        where = getattr(tokenizer, "name_or_path", "") or "text tokenizer"
        raise TokenforgeError(f"{where}: the text tokenizer has no {' / '.join(missing)} token")
    return ids


def encode_batch(
    tokenizer: Any,
    texts: list[str],
    max_length: int,
    *,
    add_bos: bool,
    add_eos: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`texts` as ids and attention mask, both LongTensors (B, max_length).

    Each text is encoded without the tokenizer's own specials (`add_special_tokens=False`, so a BERT
    tokenizer's automatic [CLS] ... [SEP] is not added either), then gets the bos id in front when `add_bos`
    and the eos id at its end when `add_eos` (`special_ids`). A text too long loses words at its end: the
    bos and eos ids are always kept. Every row is right-padded with the pad id to exactly `max_length`
    (a fixed width, so rows from different batches or a memory stack); mask is 1 on real tokens, 0 on pads.
    """
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
        raise TokenforgeError("encode_batch: texts must be a list of strings")
    reserved = int(add_bos) + int(add_eos)
    if max_length < max(1, reserved):
        raise TokenforgeError(f"encode_batch: max_length {max_length} leaves no room for the text and its specials")
    ids_of = special_ids(tokenizer)
    ids = torch.full((len(texts), max_length), ids_of["pad"], dtype=torch.long)
    mask = torch.zeros((len(texts), max_length), dtype=torch.long)
    if not texts:
        return ids, mask
    encoded = tokenizer(list(texts), add_special_tokens=False, padding=False, truncation=False)["input_ids"]
    room = max_length - reserved
    for row, words in enumerate(encoded):
        seq = ([ids_of["bos"]] if add_bos else []) + list(words[:room]) + ([ids_of["eos"]] if add_eos else [])
        ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[row, : len(seq)] = 1
    return ids, mask


def decode(tokenizer: Any, ids: torch.Tensor | Sequence[Sequence[int]] | Sequence[int]) -> list[str]:
    """The texts of `ids` (B, L), or of one sequence (L,) as a list of one text.

    Generated sequences are read up to their end: a leading bos id is skipped and everything from the first
    eos id on is dropped (what a model generates after its end-of-sequence is not text). The remaining special
    tokens (pads, [UNK], ...) are left out, and words are joined with single spaces, every punctuation
    character being a word of its own as the pre-tokenizer split it: "what color is it ?", "the dog ' s ball".
    Our tokenizer decodes so by itself; a user's tokenizer (e.g. BERT's WordPiece, whose decoder merges its
    "##" pieces and glues punctuation to the word before) is brought to the same style, so predictions read
    the same whichever tokenizer made them.
    """
    if isinstance(ids, torch.Tensor):
        rows = ids.tolist() if ids.dim() == 2 else [ids.tolist()] if ids.dim() == 1 else None
        if rows is None:
            raise TokenforgeError(f"decode: ids must be 1-D or 2-D, got shape {tuple(ids.shape)}")
    else:
        rows = list(ids)
        if rows and not isinstance(rows[0], (list, tuple)) and not isinstance(rows[0], torch.Tensor):
            rows = [rows]
        rows = [list(r.tolist() if isinstance(r, torch.Tensor) else r) for r in rows]
    ids_of = special_ids(tokenizer)
    skip = set(getattr(tokenizer, "all_special_ids", ()))
    texts = []
    for row in rows:
        row = [int(i) for i in row]
        if row and row[0] == ids_of["bos"]:
            row = row[1:]
        if ids_of["eos"] in row:
            row = row[: row.index(ids_of["eos"])]
        row = [i for i in row if i not in skip]
        text = tokenizer.decode(row, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        texts.append(_SPACES.sub(" ", _PUNCT.sub(r" \1 ", text)).strip())
    return texts
