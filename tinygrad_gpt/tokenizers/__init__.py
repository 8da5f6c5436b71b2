"""Tokenizers: text <-> lists of int ids for the GPT.

What it is: `CharTokenizer` (one id per character, from `char.py`) and the byte-level BPE tiers
`BasicTokenizer`, `RegexTokenizer`, `BPETokenizer` (`bpe.py`; file formats in `formats.py`, the
split patterns and the fast GPT-2 pre-tokenizer in `pretokenize.py`, Numba kernels in
`fastbpe.py`). Every tokenizer offers encode(str) -> list[int], decode(list[int]) -> str,
vocab_size and to_dict() for checkpoints; `tokenizer_from_dict(d)` rebuilds either kind from its
dict (the "type" key: "char" or "bpe"). Files, one reader and one writer per format (formats.py):
`load_tokenizer` / `save_tokenizer` (ours), `load_gpt2` / `save_gpt2` (vocab.json + merges.txt, and
tokenizer.json), `load_tokenizer_json`, `load_tiktoken` / `save_tiktoken`.

Follows: minbpe's layout (one tier per idea), tiktoken's special-token rules.

Deliberately does not: pick a tokenizer for you; scripts choose (`--tokenizer char|bpe`).
"""
from tinygrad_gpt.tokenizers.bpe import (
    ENDOFTEXT, GPT2_SPLIT_PATTERN, GPT4_SPLIT_PATTERN, BasicTokenizer, BPETokenizer, RegexTokenizer)
from tinygrad_gpt.tokenizers import formats as _formats
from tinygrad_gpt.tokenizers.char import CharTokenizer
from tinygrad_gpt.tokenizers.formats import (TokenizerFileError, load_gpt2, load_tiktoken, load_tokenizer,
                                             load_tokenizer_json, save_gpt2, save_tiktoken, save_tokenizer)


def tokenizer_from_dict(d):
    """Any tokenizer of this package from its `to_dict()` (e.g. read back from a checkpoint)."""
    if isinstance(d, dict) and d.get("type") == "char":
        return CharTokenizer.from_dict(d)
    return _formats.bpe_from_dict(d, source="tokenizer_from_dict")


__all__ = ["tokenizer_from_dict", "BasicTokenizer", "RegexTokenizer", "BPETokenizer", "CharTokenizer",
           "TokenizerFileError",
           "load_gpt2", "load_tiktoken", "load_tokenizer", "load_tokenizer_json", "save_gpt2", "save_tiktoken",
           "save_tokenizer", "ENDOFTEXT", "GPT2_SPLIT_PATTERN",
           "GPT4_SPLIT_PATTERN"]
