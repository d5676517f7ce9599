"""Data for weakly supervised grounding: the real 5k-digit MNIST subset, its disjoint train/test digit pools,
multi-digit scenes composed from them (:mod:`weakground.data.multimnist`), splits and training batches, the
synthetic captioned scenes, readers of real caption datasets, and the one registry of them all
(:mod:`weakground.data.sources`).

Submodules are imported on demand so that ``import weakground.data`` stays cheap.
"""
