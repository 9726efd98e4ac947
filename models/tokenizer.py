"""An offline byte-level tokenizer for the tiny presets.

The tiny presets must work with no network and no files, so their tokenizer
is built in code: a byte-level BPE with no merges (each UTF-8 byte is one
token) plus the special tokens the family expects. Any text encodes, the
vocabulary stays at a few hundred entries, and encoding is deterministic.
"""

from __future__ import annotations

from typing import Literal

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

TokenizerStyle = Literal["bert", "gpt2", "llama"]

# Special tokens per family, in id order (ids 0..k-1); byte tokens follow.
_SPECIALS: dict[TokenizerStyle, list[str]] = {
    "bert": ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
    "gpt2": ["<|endoftext|>"],
    "llama": ["<unk>", "<s>", "</s>"],
}


def _byte_level_tokenizer(specials: list[str]) -> Tokenizer:
    """Byte-level BPE without merges: specials first, then the 256 byte symbols."""
    vocab: dict[str, int] = {token: i for i, token in enumerate(specials)}
    for symbol in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[symbol] = len(vocab)
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def build_byte_tokenizer(style: TokenizerStyle, model_max_length: int) -> PreTrainedTokenizerFast:
    """Build the offline tokenizer of a tiny preset for the given family style.

    bert: ``[CLS] text [SEP]`` with ``[PAD]`` (id 0), ``[UNK]``, ``[MASK]``.
    gpt2: a single ``<|endoftext|>`` token serving as bos, eos, unk and pad.
    llama: ``<s> text`` with ``<unk>``, ``<s>``, ``</s>``; pad is ``</s>`` (eos),
    as is usual for decoder-only models.
    """
    if style not in _SPECIALS:
        raise ValueError(f"`style` must be one of {sorted(_SPECIALS)}, got {style!r}")
    specials = _SPECIALS[style]
    tokenizer = _byte_level_tokenizer(specials)
    ids = {token: i for i, token in enumerate(specials)}
    if style == "bert":
        tokenizer.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]",
            pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", ids["[CLS]"]), ("[SEP]", ids["[SEP]"])],
        )
        return PreTrainedTokenizerFast(
            tokenizer_object=tokenizer,
            pad_token="[PAD]",
            unk_token="[UNK]",
            cls_token="[CLS]",
            sep_token="[SEP]",
            mask_token="[MASK]",
            model_max_length=model_max_length,
        )
    if style == "gpt2":
        eos = "<|endoftext|>"
        return PreTrainedTokenizerFast(
            tokenizer_object=tokenizer,
            bos_token=eos,
            eos_token=eos,
            unk_token=eos,
            pad_token=eos,
            model_max_length=model_max_length,
        )
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A",
        pair="<s> $A <s> $B:1",
        special_tokens=[("<s>", ids["<s>"])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="</s>",
        model_max_length=model_max_length,
    )
