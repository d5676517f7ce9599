"""A BERT encoder in plain torch, for the frozen MiniLM: the same numbers as ``transformers.BertModel`` at a
fraction of the start-up.

Importing ``transformers`` and building its ``BertModel`` costs about 3.5 s on 2 CPU cores before the first
phrase is encoded (its lazy module system, hub-kernel and activation registries), which made up most of a cold
``weakground locate``. A frozen encoder in eval mode needs none of it: embeddings, then per layer self-attention
and a GELU feed-forward, each with a residual and LayerNorm (Devlin et al.). The weights are read from the
package's ``model.safetensors`` under the names ``BertModel`` gives them, and the word pieces come from the
package's ``tokenizer.json`` through the ``tokenizers`` library (the Rust tokenizer ``transformers`` itself wraps),
so ids, pieces and hidden states agree with ``transformers`` (``tests/test_text_minilm.py`` checks both).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn import functional as F


@dataclass(frozen=True)
class BertShape:
    """What ``config.json`` says of the architecture (the keys ``transformers`` writes)."""

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int
    type_vocab_size: int
    layer_norm_eps: float

    @classmethod
    def from_file(cls, path: Path) -> "BertShape":
        config = json.loads(Path(path).read_text())
        if config.get("hidden_act", "gelu") != "gelu" or config.get("position_embedding_type",
                                                                     "absolute") != "absolute":
            raise ValueError(f"{path}: only absolute positions and exact GELU are implemented")
        return cls(**{k: config[k] for k in cls.__dataclass_fields__})


class _Layer(nn.Module):
    def __init__(self, shape: BertShape) -> None:
        super().__init__()
        d, eps = shape.hidden_size, shape.layer_norm_eps
        self.heads = shape.num_attention_heads
        self.query, self.key, self.value, self.attention_out = (nn.Linear(d, d) for _ in range(4))
        self.attention_norm = nn.LayerNorm(d, eps=eps)
        self.intermediate = nn.Linear(d, shape.intermediate_size)
        self.output = nn.Linear(shape.intermediate_size, d)
        self.output_norm = nn.LayerNorm(d, eps=eps)

    def forward(self, x: Tensor, additive_mask: Tensor) -> Tensor:
        n, t, d = x.shape

        def split(proj: nn.Linear) -> Tensor:  # [N, T, D] -> [N, heads, T, D / heads]
            return proj(x).view(n, t, self.heads, d // self.heads).transpose(1, 2)

        q, k, v = split(self.query), split(self.key), split(self.value)
        # the fused kernel transformers calls by default, so the numbers agree to the last bits
        context = F.scaled_dot_product_attention(q, k, v, attn_mask=additive_mask).transpose(1, 2).reshape(n, t, d)
        x = self.attention_norm(self.attention_out(context) + x)
        return self.output_norm(self.output(F.gelu(self.intermediate(x))) + x)


# transformers' parameter names -> this module's, for the parts that differ
_RENAMES = (("attention.self.query", "query"), ("attention.self.key", "key"), ("attention.self.value", "value"),
            ("attention.output.dense", "attention_out"), ("attention.output.LayerNorm", "attention_norm"),
            ("intermediate.dense", "intermediate"), ("output.dense", "output"), ("output.LayerNorm", "output_norm"))


class BertEncoder(nn.Module):
    """``BertModel``'s last hidden state for ``input_ids`` and ``attention_mask`` (token types all 0)."""

    def __init__(self, shape: BertShape) -> None:
        super().__init__()
        d = shape.hidden_size
        self.word_embeddings = nn.Embedding(shape.vocab_size, d)
        self.position_embeddings = nn.Embedding(shape.max_position_embeddings, d)
        self.token_type_embeddings = nn.Embedding(shape.type_vocab_size, d)
        self.embedding_norm = nn.LayerNorm(d, eps=shape.layer_norm_eps)
        self.layers = nn.ModuleList(_Layer(shape) for _ in range(shape.num_hidden_layers))

    @classmethod
    def from_folder(cls, folder: Path) -> "BertEncoder":
        """The encoder with the weights of a ``transformers`` BERT folder (``config.json``, ``model.safetensors``)."""
        from safetensors.torch import load_file

        folder = Path(folder)
        model = cls(BertShape.from_file(folder / "config.json"))
        model.load_state_dict(_renamed(load_file(str(folder / "model.safetensors"))))
        return model.eval()

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        # (words + token type) + positions: transformers' order of the sums, so the result is bit-identical
        x = self.word_embeddings(input_ids) + self.token_type_embeddings.weight[0] + self.position_embeddings(positions)
        x = self.embedding_norm(x)
        # Padded keys get the dtype's most negative value, as transformers does: softmax gives them weight 0.
        additive = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min
        for layer in self.layers:
            x = layer(x, additive)
        return x


def _renamed(state: dict[str, Tensor]) -> dict[str, Tensor]:
    out = {}
    for name, value in state.items():
        if name.startswith(("pooler.", "embeddings.position_ids")):
            continue  # the pooler is not used (sentence vectors are mean-pooled); position ids are an arange
        name = name.replace("embeddings.LayerNorm", "embedding_norm").removeprefix("embeddings.")
        name = name.replace("encoder.layer.", "layers.")
        for old, new in _RENAMES:
            name = name.replace(f".{old}.", f".{new}.")
        out[name] = value
    return out


class PieceTokenizer:
    """Word pieces from a ``tokenizer.json`` (the ``tokenizers`` library): ``[CLS] pieces [SEP]``, cut to
    ``max_length`` pieces, padded to the batch's longest."""

    def __init__(self, path: Path, max_length: int) -> None:
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(str(path))
        self.tokenizer.enable_truncation(max_length)
        pad_id = self.tokenizer.token_to_id("[PAD]")
        self.tokenizer.enable_padding(pad_id=0 if pad_id is None else pad_id, pad_token="[PAD]")

    def __call__(self, texts: list[str]) -> tuple[Tensor, Tensor, list[list[str]]]:
        """(input ids ``[N, T]``, attention mask ``[N, T]``, per text its pieces without padding)."""
        encodings = self.tokenizer.encode_batch(list(texts))
        ids = torch.tensor([e.ids for e in encodings], dtype=torch.long)
        mask = torch.tensor([e.attention_mask for e in encodings], dtype=torch.long)
        pieces = [[tok for tok, m in zip(e.tokens, e.attention_mask) if m] for e in encodings]
        return ids, mask, pieces
