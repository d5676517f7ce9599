"""weakground: weakly supervised visual grounding.

Learn, from images paired only with text (labels, captions) and no boxes, where a phrase is in an image;
turn a phrase into a heatmap, a point and boxes. Heavy modules (torch, matplotlib) are imported lazily by the
CLI so that ``weakground --help`` stays instant.
"""

__version__ = "0.1.0"
