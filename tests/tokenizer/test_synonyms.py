"""Code synonyms: nearest codes by cosine similarity, and `tokenforge synonyms`."""

import json

import numpy as np
import pytest

from tokenforge import cli
from tokenforge.errors import TokenforgeError
from tokenforge.tokenizer import vq as tokenizer
from tokenforge.tokenizer.synonyms import (
    cosine_similarity,
    nearest_codes,
    synonyms_json,
)


def at_angles(degrees, lengths=None) -> np.ndarray:
    """2-D vectors at the given angles (lengths vary to show only the angle counts)."""
    rad = np.deg2rad(degrees)
    lengths = np.ones(len(rad)) if lengths is None else np.asarray(lengths)
    return (np.stack([np.cos(rad), np.sin(rad)], axis=1) * lengths[:, None]).astype(np.float32)


def test_known_angles():
    codebook = at_angles([0, 10, 30, 100, 180], lengths=[1, 5, 0.1, 2, 3])
    # e.g. code 3 at 100 degrees: code 2 is 70 away, 4 is 80, 1 is 90, 0 is 100
    expected = {0: [1, 2, 3, 4], 1: [0, 2, 3, 4], 2: [1, 0, 3, 4], 3: [2, 4, 1, 0], 4: [3, 2, 1, 0]}
    assert nearest_codes(codebook, 4).tolist() == [expected[i] for i in range(5)]
    assert nearest_codes(codebook, 1)[:, 0].tolist() == [1, 0, 1, 2, 3]


def test_ties_go_to_the_lower_id():
    # Code 0 at 0 degrees; codes 3 and 1 both 60 degrees away, 2 and 4 both 120 degrees away: float noise
    # (cos/sin of different angles) must not reorder them.
    codebook = at_angles([0, 60, 120, -60, -120])
    assert nearest_codes(codebook, 4)[0].tolist() == [1, 3, 2, 4]
    # identical vectors: each is the other's best synonym, and code 0 never lists itself
    same = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    assert nearest_codes(same, 2).tolist() == [[1, 2], [0, 2], [0, 1]]


def test_zero_vector_is_unlike_everything():
    codebook = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    assert np.isfinite(cosine_similarity(codebook)).all()
    assert nearest_codes(codebook, 3)[1].tolist() == [0, 2, 3]  # 0 (cos 0) ties 2 (cos 0), lower id first


@pytest.mark.parametrize("k", [0, -1, 5, 6])
def test_bad_k(k):
    with pytest.raises(TokenforgeError, match=f"--k {k}: must be between 1 and 4"):
        nearest_codes(at_angles([0, 1, 2, 3, 4]), k)


def test_json_layout():
    text = synonyms_json(nearest_codes(at_angles(np.arange(12) * 30.0), 2))
    data = json.loads(text)
    assert list(data) == [str(i) for i in range(12)]  # numeric order, "10" after "9"
    assert data["0"] == [1, 11] and data["11"] == [0, 10]
    assert len(text.splitlines()) == 14  # braces + one line per code


# ------------------------------------------------------------------------------------------ CLI


@pytest.fixture
def tokenforge(monkeypatch):
    monkeypatch.setattr(cli, "STAGES", ("synonyms",))
    return cli.main


def test_cli_synonyms(tokenforge, tok_dir, tmp_path):
    out = tmp_path / "syn" / "synonyms.json"
    assert tokenforge(["synonyms", "--tokenizer", str(tok_dir), "--out", str(out), "--k", "3", "-q"]) == 0
    data = json.loads(out.read_text())
    expected = nearest_codes(tokenizer.load_tokenizer(tok_dir).codebook.numpy(), 3)
    assert data == {str(i): row.tolist() for i, row in enumerate(expected)}


def test_cli_bad_k(tokenforge, tok_dir, tmp_path, capsys):
    out = tmp_path / "synonyms.json"
    assert tokenforge(["synonyms", "--tokenizer", str(tok_dir), "--out", str(out), "--k", "16", "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "tokenforge synonyms: error: --k 16: must be between 1 and 15 (the codebook size minus 1)"
    assert not out.exists()
