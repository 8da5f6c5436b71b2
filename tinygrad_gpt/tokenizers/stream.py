"""Streaming decode: token ids arriving one at a time -> text written as soon as it is whole.

A byte-level BPE token can end in the middle of a UTF-8 character (GPT-2 splits many emoji and
accented letters over two or three tokens), so decoding each token on its own would print U+FFFD
for both halves. `TextStream` feeds each token's bytes to an incremental UTF-8 decoder, which holds
back an unfinished character until its last byte arrives; a character-level tokenizer's ids are
decoded one by one. Every piece is written and flushed at once, so what was printed stays printed
when the process is interrupted.

Follows: the `TextStreamer` idea of Hugging Face transformers (print while generating).
Deliberately does not: undo the GPT-2 pre-tokenizer's spacing, or buffer whole words.
"""
import codecs
import sys


class TextStream:
    """Call with one token id at a time; writes the decoded text to `out` (default sys.stdout)."""

    def __init__(self, tokenizer, out=None):
        self.tokenizer = tokenizer
        self.out = out if out is not None else sys.stdout
        self.byte_level = hasattr(tokenizer, "decode_bytes")
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def write(self, text):
        if text:
            self.out.write(text)
            self.out.flush()

    def __call__(self, token_id):
        token_id = int(token_id)
        if self.byte_level:
            self.write(self._utf8.decode(self.tokenizer.decode_bytes([token_id])))
        else:
            self.write(self.tokenizer.decode([token_id]))

    def flush(self):
        """Write what an unfinished UTF-8 character left behind (as U+FFFD): the text is complete."""
        if self.byte_level:
            self.write(self._utf8.decode(b"", final=True))

    def close(self):
        """flush(), then a newline."""
        self.flush()
        self.write("\n")
