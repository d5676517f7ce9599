"""Text side: turning a label or a phrase into a query vector. Importing this package registers the text encoders
the caption methods choose by name (:data:`weakground.registry.TEXT_ENCODERS`; see :mod:`weakground.text.encoders`).
"""

from weakground.text import minilm  # noqa: F401  (registers "minilm")
from weakground.text import recurrent  # noqa: F401  (registers "sru", "gru", "bilstm")

__all__ = ["minilm", "recurrent"]
