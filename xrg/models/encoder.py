"""Report encoders: the hierarchical attentional encoder (HAE) of XRayGAN §2.1 and its ablation.

A section (FINDINGS or IMPRESSION) arrives as word ids and a mask of shape
``[batch, sentences, words]`` (:func:`xrg.data.datasets.collate_pairs`). The HAE reads every
sentence with a word-level BiLSTM, pools its states with additive attention into a sentence
vector, reads the sentence vectors with a sentence-level BiLSTM and pools those with a second
attention into the section vector. As in the official code, findings and impression have
their own hierarchy (256-d each with 128 hidden units per direction) and the condition
``c`` is their concatenation (512-d).

Padding never changes a result: the LSTMs run on packed sequences holding only the real
words (or non-empty sentences), and attention is a softmax over real positions only. A
section with no words encodes to the zero vector. :class:`FlatEncoder` is the "w/o HAE"
ablation of Table 2: one BiLSTM over all words of the report, pooled to the same size.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Self

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from xrg.errors import ConfigError

ENCODER_KINDS: tuple[str, ...] = ("hierarchical", "flat")
FLAT_POOLINGS: tuple[str, ...] = ("mean", "last")


class AdditiveAttention(nn.Module):
    """Attention pooling ``e_t = v · tanh(W h_t + b)``, softmax over unmasked positions (§2.1).

    ``forward(states [..., T, D], mask [..., T])`` returns ``(context [..., D], weights [..., T])``.
    Masked positions get weight 0; a row with no unmasked position gets all-zero weights and
    a zero context (never NaN).
    """

    def __init__(self, input_dim: int, attention_dim: int) -> None:
        super().__init__()
        self.project = nn.Linear(input_dim, attention_dim)
        self.score = nn.Linear(attention_dim, 1, bias=False)

    def forward(self, states: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scores = self.score(torch.tanh(self.project(states))).squeeze(-1)
        # Empty rows are given finite scores so the softmax stays finite; the mask then zeroes them.
        valid = mask | ~mask.any(dim=-1, keepdim=True)
        scores = scores.masked_fill(~valid, float("-inf"))
        weights = torch.softmax(scores, dim=-1) * mask
        context = torch.einsum("...t,...td->...d", weights, states)
        return context, weights


def run_bilstm(lstm: nn.LSTM, inputs: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Run a batch-first bidirectional ``lstm`` over the unmasked positions of each row only.

    ``inputs [N, T, D]``, ``mask [N, T]`` (True on real positions, in any order). Returns the
    states ``[N, T, 2H]`` at their original positions (zero where masked) and the final
    forward/backward states concatenated ``[N, 2H]`` (zero for rows with nothing unmasked).
    The real positions of a row are moved to its front, keeping their order, and packed, so
    neither padding nor the batch's other rows change a row's result.
    """
    num_rows, length, _ = inputs.shape
    state_dim = 2 * lstm.hidden_size
    states = inputs.new_zeros(num_rows, length, state_dim)
    final = inputs.new_zeros(num_rows, state_dim)
    lengths = mask.sum(dim=1)
    rows = torch.nonzero(lengths > 0).squeeze(1)
    if rows.numel() == 0:
        return states, final
    order = torch.argsort((~mask[rows]).to(torch.int8), dim=1, stable=True)
    compact = torch.gather(inputs[rows], 1, order.unsqueeze(-1).expand(-1, -1, inputs.shape[-1]))
    packed = pack_padded_sequence(compact, lengths[rows].cpu(), batch_first=True, enforce_sorted=False)
    packed_states, (hidden, _) = lstm(packed)
    compact_states, _ = pad_packed_sequence(packed_states, batch_first=True, total_length=length)
    restored = torch.zeros_like(compact_states).scatter(
        1, order.unsqueeze(-1).expand_as(compact_states), compact_states
    )
    states = states.index_copy(0, rows, restored)
    final = final.index_copy(0, rows, torch.cat([hidden[-2], hidden[-1]], dim=-1))
    return states, final


@dataclass
class SectionEncoding:
    """One section's encoding: ``vector [B, 2H]``, ``word_weights [B, S, W]``, ``sentence_weights [B, S]``.

    ``word_states [B, S, W, 2H]`` are the word-level BiLSTM states (zero on padding), the word
    features AttnGAN's attention reads.
    """

    vector: torch.Tensor
    word_weights: torch.Tensor
    sentence_weights: torch.Tensor
    word_states: torch.Tensor | None = None


@dataclass
class ReportEncoding:
    """The condition ``c [B, cond_dim]`` and, for the HAE, each section's attention."""

    c: torch.Tensor
    findings: SectionEncoding | None = None
    impression: SectionEncoding | None = None


class SectionEncoder(nn.Module):
    """Word BiLSTM + word attention → sentence vectors → sentence BiLSTM + attention (§2.1).

    ``embedding`` may be shared with another section encoder. The attention layers have
    ``2 * hidden`` units, the size of the states they pool.
    """

    def __init__(self, embedding: nn.Embedding, hidden: int = 128, dropout: float = 0.0) -> None:
        super().__init__()
        self.embedding = embedding
        self.hidden = hidden
        self.word_lstm = nn.LSTM(embedding.embedding_dim, hidden, batch_first=True, bidirectional=True)
        self.word_attention = AdditiveAttention(2 * hidden, 2 * hidden)
        self.sentence_lstm = nn.LSTM(2 * hidden, hidden, batch_first=True, bidirectional=True)
        self.sentence_attention = AdditiveAttention(2 * hidden, 2 * hidden)
        self.dropout = nn.Dropout(dropout)

    @property
    def output_dim(self) -> int:
        return 2 * self.hidden

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> SectionEncoding:
        batch, num_sentences, num_words = ids.shape
        word_mask = mask.reshape(batch * num_sentences, num_words)
        words = self.dropout(self.embedding(ids.reshape(batch * num_sentences, num_words)))
        word_states, _ = run_bilstm(self.word_lstm, words, word_mask)
        sentences, word_weights = self.word_attention(word_states, word_mask)
        sentences = self.dropout(sentences.reshape(batch, num_sentences, self.output_dim))
        sentence_mask = mask.any(dim=-1)
        sentence_states, _ = run_bilstm(self.sentence_lstm, sentences, sentence_mask)
        vector, sentence_weights = self.sentence_attention(sentence_states, sentence_mask)
        return SectionEncoding(
            vector=vector,
            word_weights=word_weights.reshape(batch, num_sentences, num_words),
            sentence_weights=sentence_weights,
            word_states=word_states.reshape(batch, num_sentences, num_words, self.output_dim),
        )


@dataclass
class EncoderConfig:
    """Report encoder settings; ``kind`` picks the HAE or the flat "w/o HAE" ablation."""

    vocab_size: int
    embed_dim: int = 128
    hidden: int = 128  # LSTM units per direction (§3.2)
    dropout: float = 0.0
    kind: str = "hierarchical"
    share_embedding: bool = True  # findings and impression share one word embedding
    flat_pooling: str = "mean"  # FlatEncoder: mean of the states, or the last forward/backward states

    def __post_init__(self) -> None:
        if self.vocab_size < 3:
            raise ConfigError(f"vocab_size must be at least 3 (PAD, UNK and one word), got {self.vocab_size}")
        if self.embed_dim < 1 or self.hidden < 1:
            raise ConfigError(f"embed_dim and hidden must be positive, got {self.embed_dim} and {self.hidden}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.kind not in ENCODER_KINDS:
            raise ConfigError(f"kind must be one of {ENCODER_KINDS}, got {self.kind!r}")
        if self.flat_pooling not in FLAT_POOLINGS:
            raise ConfigError(f"flat_pooling must be one of {FLAT_POOLINGS}, got {self.flat_pooling!r}")

    @property
    def cond_dim(self) -> int:
        """Size of the condition ``c``: two sections of ``2 * hidden`` each."""
        return 4 * self.hidden


class ReportModelConfig:
    """What every model config whose networks read a report through the encoder shares.

    A dataclass mixin (no fields of its own) for configs with ``vocab_size``, ``embed_dim``,
    ``hidden``, ``encoder_dropout``, ``share_embedding``, ``max_sentences`` and ``max_words``,
    and optionally ``encoder_kind`` and ``flat_pooling`` (the XRayGAN ablations; the baselines
    always use the HAE). ``vocab_size`` comes from the data: a run config's model leaves it
    unset (0) and the trainer fills it in (:meth:`with_vocabulary`).
    """

    vocab_size: int
    max_sentences: int
    max_words: int

    def check_report_settings(self) -> None:
        """Refuse report limits, a vocabulary size or encoder settings that cannot work."""
        if self.max_sentences < 1 or self.max_words < 1:
            raise ConfigError(
                f"max_sentences and max_words must be at least 1, got {self.max_sentences}, {self.max_words}"
            )
        if self.vocab_size != 0 and self.vocab_size < 3:
            raise ConfigError(f"vocab_size must be 0 (unset) or at least 3, got {self.vocab_size}")
        self._encoder_config(self.vocab_size or 3)  # validates the encoder settings

    @classmethod
    def from_run_config(cls, config: Any, vocab_size: int) -> Self:
        """The model of a run config (its nested ``model``) for ``vocab_size`` words."""
        return config.model.with_vocabulary(vocab_size)

    def with_vocabulary(self, vocab_size: int) -> Self:
        """This architecture for a vocabulary of ``vocab_size`` words."""
        return dataclasses.replace(self, vocab_size=vocab_size)  # type: ignore[type-var]

    def encoder_config(self) -> EncoderConfig:
        if not self.vocab_size:
            raise ConfigError("the model's vocab_size is unset (0): take with_vocabulary(len(vocabulary)) first")
        return self._encoder_config(self.vocab_size)

    def _encoder_config(self, vocab_size: int) -> EncoderConfig:
        settings: Any = self
        return EncoderConfig(
            vocab_size=vocab_size, embed_dim=settings.embed_dim, hidden=settings.hidden,
            dropout=settings.encoder_dropout, kind=getattr(settings, "encoder_kind", "hierarchical"),
            share_embedding=settings.share_embedding, flat_pooling=getattr(settings, "flat_pooling", "mean"),
        )  # fmt: skip


class HierarchicalEncoder(nn.Module):
    """The HAE: one :class:`SectionEncoder` per section, ``c = [findings; impression]``."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.config = config

        def embedding() -> nn.Embedding:
            return nn.Embedding(config.vocab_size, config.embed_dim, padding_idx=0)

        findings_embedding = embedding()
        impression_embedding = findings_embedding if config.share_embedding else embedding()
        self.findings = SectionEncoder(findings_embedding, config.hidden, config.dropout)
        self.impression = SectionEncoder(impression_embedding, config.hidden, config.dropout)

    def forward(
        self,
        findings_ids: torch.Tensor,
        findings_mask: torch.Tensor,
        impression_ids: torch.Tensor,
        impression_mask: torch.Tensor,
    ) -> ReportEncoding:
        findings = self.findings(findings_ids, findings_mask)
        impression = self.impression(impression_ids, impression_mask)
        c = torch.cat([findings.vector, impression.vector], dim=-1)
        return ReportEncoding(c=c, findings=findings, impression=impression)


class FlatEncoder(nn.Module):
    """The "w/o HAE" ablation: one BiLSTM over the report's words, findings then impression.

    Sentences are concatenated and padding removed. The LSTM has ``2 * hidden`` units per
    direction, so the pooled output has the HAE's size ``4 * hidden``; it has no attention.
    """

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.embed_dim, padding_idx=0)
        self.lstm = nn.LSTM(config.embed_dim, 2 * config.hidden, batch_first=True, bidirectional=True)
        self.dropout = nn.Dropout(config.dropout)

    def forward(
        self,
        findings_ids: torch.Tensor,
        findings_mask: torch.Tensor,
        impression_ids: torch.Tensor,
        impression_mask: torch.Tensor,
    ) -> ReportEncoding:
        batch = findings_ids.shape[0]
        ids = torch.cat([findings_ids.reshape(batch, -1), impression_ids.reshape(batch, -1)], dim=1)
        mask = torch.cat([findings_mask.reshape(batch, -1), impression_mask.reshape(batch, -1)], dim=1)
        states, final = run_bilstm(self.lstm, self.dropout(self.embedding(ids)), mask)
        if self.config.flat_pooling == "last":
            return ReportEncoding(c=final)
        counts = mask.sum(dim=1, keepdim=True).clamp(min=1).to(states.dtype)
        return ReportEncoding(c=states.sum(dim=1) / counts)


def build_encoder(config: EncoderConfig) -> HierarchicalEncoder | FlatEncoder:
    """The encoder ``config.kind`` names."""
    return HierarchicalEncoder(config) if config.kind == "hierarchical" else FlatEncoder(config)
