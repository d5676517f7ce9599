import numpy as np

from weakground.data.batches import classification_batches, label_query_batches
from weakground.data.multimnist import MultiMnistSpec, make_multimnist


def test_training_batches_carry_no_boxes_and_only_image_level_labels():
    data = make_multimnist(MultiMnistSpec(grid=2), 40, pool="train", seed=0)
    present = [data.present(i) for i in range(len(data))]
    batches = list(label_query_batches(data.images, present, 8, 3, 2, np.random.default_rng(0)))
    assert len(batches) == 5
    seen = set()
    for batch in batches:
        assert set(batch) == {"images", "labels", "absent"}  # no box, no position, nothing spatial
        assert batch["images"].shape == (8, 1, 56, 56) and 0 <= batch["images"].min() and batch["images"].max() <= 1
        assert batch["labels"].shape == (8, 3) and batch["absent"].shape == (8, 2)
        # Recover each image by content to check its queried labels really are (and are not) in it.
        for img, labels, absent in zip(batch["images"], batch["labels"], batch["absent"]):
            i = int(np.flatnonzero((data.images == (img[0].numpy() * 255).round().astype(np.uint8)).all(axis=(1, 2)))[0])
            seen.add(i)
            assert set(labels.tolist()) <= set(present[i].tolist())
            assert not set(absent.tolist()) & set(present[i].tolist())
    assert len(seen) == 40  # every image once per epoch


def test_batches_are_deterministic_per_epoch_rng():
    x = np.random.default_rng(0).integers(0, 255, (20, 28, 28), dtype=np.uint8)
    y = np.arange(20) % 10
    a = list(classification_batches(x, y, 4, np.random.default_rng([0, 1]), noise_std=0.1))
    b = list(classification_batches(x, y, 4, np.random.default_rng([0, 1]), noise_std=0.1))
    c = list(classification_batches(x, y, 4, np.random.default_rng([0, 2]), noise_std=0.1))
    assert all((p["images"] == q["images"]).all() for p, q in zip(a, b))
    assert not all((p["images"] == q["images"]).all() for p, q in zip(a, c))
