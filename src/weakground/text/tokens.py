"""The one word-level tokenizer of the project (label queries, GloVe and the recurrent text encoders).

Text is lower-cased and split into words, numbers and punctuation marks, the way the corpora behind GloVe 6B
were tokenized (Stanford/PTB style) so that as many tokens as possible have a pretrained vector:

* words keep inner hyphens, numbers their separators: ``"t-shirt"``, ``"3.5"``, ``"1,000"``;
* English clitics are split off as their own tokens: ``"dog's" -> dog 's``, ``"don't" -> do n't``;
* every other non-space, non-word character is a token of its own (``","``, ``"."``, ``"("``) when
  ``punctuation=True``, and is dropped otherwise.

Letters are Unicode-aware (``"café"`` is one word); underscores count as punctuation.
"""

from __future__ import annotations

import re

_LETTERS = r"[^\W_]"  # a Unicode letter or digit
_WORD = rf"\d+(?:[.,]\d+)+|{_LETTERS}+(?:-{_LETTERS}+)*"  # a number with separators, or a hyphenated word
_TOKEN_RE = re.compile(
    rf"{_LETTERS}+?(?=n['’]t\b)"  # "do" of "don't", "ca" of "can't"
    rf"|n['’]t\b"  # the negation clitic
    rf"|['’](?:s|re|ve|ll|m|d)\b"  # 's 're 've 'll 'm 'd
    rf"|{_WORD}"
    r"|(?P<punct>[^\w\s]|_)"
)


def tokenize(text: str, punctuation: bool = False) -> list[str]:
    """Lower-cased tokens of ``text`` (see the module docstring for the rules).

    Args:
        text: any string; an empty or whitespace-only string gives ``[]``.
        punctuation: keep punctuation marks as tokens (the recurrent encoders read them; label lookups do not).

    Returns:
        The tokens in reading order, curly apostrophes normalised to ``'``.
    """
    tokens = []
    for match in _TOKEN_RE.finditer(text.lower()):
        if match.group("punct") is not None and not punctuation:
            continue
        tokens.append(match.group(0).replace("’", "'"))
    return tokens
