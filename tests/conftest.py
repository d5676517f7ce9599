import os

import pytest
import torch

# Two cores on CI: keep torch from oversubscribing them when pytest runs alongside other work.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def tiny_backbone():
    from weakground.config import BackboneConfig

    return BackboneConfig(widths=[4, 8, 8, 8], blocks=[1, 1, 1, 1], stage_strides=[1, 2, 1, 1])


@pytest.fixture
def digit_names():
    return [str(d) for d in range(10)]


@pytest.fixture(scope="session")
def bridge_model():
    """The zero-training bridge method (pretrained weights from pip packages; loaded once per session)."""
    from weakground.methods import create_method

    return create_method("bridge", None, [], {}).eval()

