"""The dataset registry (weakground.data.sources): one typed record per dataset, what reads it, what it reads."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from weakground.config import DataConfig
from weakground.data.readers import parse_spec, read_dataset
from weakground.data.sources import (
    CAPTION_GROUNDING,
    LABEL_GROUNDING,
    DatasetSource,
    dataset_source,
    dataset_sources,
    dataset_spec,
    disk_formats,
    extra_test_splits,
    scenes_root,
    unused_data_settings,
)
from weakground.data.splits import build_splits, class_names
from weakground.errors import ConfigError, WeakgroundError
from weakground.registry import DATASETS

ALL = ["coco", "flickr30k_entities", "multimnist", "referit", "scenes", "visual_genome"]
FORMATS = ["coco", "flickr30k_entities", "referit", "visual_genome"]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("WEAKGROUND_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_every_dataset_is_one_record_in_the_one_registry():
    assert DATASETS.names() == ALL
    for name in ALL:
        source = dataset_source(name)
        assert isinstance(source, DatasetSource) and source.name == name and source.description
        assert DATASETS.get(name) is source
    with pytest.raises(dataclasses.FrozenInstanceError):
        dataset_source("coco").task = LABEL_GROUNDING  # type: ignore[misc]


def test_an_unknown_dataset_is_one_line_listing_the_known_ones():
    with pytest.raises(WeakgroundError, match=r"^unknown dataset 'imagenet'; known: " + ", ".join(ALL) + "$"):
        dataset_source("imagenet")


def test_each_dataset_names_the_task_that_trains_on_it():
    assert {s.name: s.task for s in dataset_sources()} == {
        "multimnist": LABEL_GROUNDING, "scenes": CAPTION_GROUNDING, "flickr30k_entities": CAPTION_GROUNDING,
        "coco": CAPTION_GROUNDING, "referit": CAPTION_GROUNDING, "visual_genome": CAPTION_GROUNDING}
    assert [s.name for s in dataset_sources(LABEL_GROUNDING)] == ["multimnist"]
    assert [s.name for s in dataset_sources(CAPTION_GROUNDING)] == [n for n in ALL if n != "multimnist"]


def test_each_dataset_has_exactly_the_way_to_get_it_it_needs():
    assert disk_formats() == FORMATS
    multimnist, scenes = dataset_source("multimnist"), dataset_source("scenes")
    assert multimnist.build_splits is not None and multimnist.class_names == tuple("0123456789")
    assert scenes.materialize is scenes_root and scenes.read_as == "flickr30k_entities"
    assert all(dataset_source(f).read is not None and dataset_source(f).build_splits is None for f in FORMATS)


def test_a_malformed_record_fails_when_it_is_made():
    with pytest.raises(ValueError, match="exactly one"):
        DatasetSource("x", CAPTION_GROUNDING, "d", ("path",))
    with pytest.raises(ValueError, match="exactly one"):
        DatasetSource("x", CAPTION_GROUNDING, "d", ("path",), read=read_dataset, build_splits=build_splits)
    with pytest.raises(ValueError, match="read_as"):
        DatasetSource("x", CAPTION_GROUNDING, "d", (), materialize=scenes_root)
    with pytest.raises(ValueError, match="not DataConfig fields: gird"):
        DatasetSource("x", LABEL_GROUNDING, "d", ("gird",), build_splits=build_splits)


def test_every_data_setting_is_read_by_some_dataset():
    names = {f.name for f in dataclasses.fields(DataConfig)} - {"name"}
    assert names == {f for s in dataset_sources() for f in s.fields}  # no dead setting, no unknown one


def test_dataset_spec_of_a_disk_format_is_its_name_and_path():
    assert dataset_spec(DataConfig(name="coco", path="/data/coco")) == "coco:/data/coco"
    assert parse_spec(dataset_spec(DataConfig(name="referit", path="/r")))[0] == "referit"


def test_dataset_spec_errors_name_the_setting():
    with pytest.raises(ConfigError, match=r"data.name 'flickr30k_entities' reads a dataset from disk: set data.path"):
        dataset_spec(DataConfig(name="flickr30k_entities"))
    expected = (r"data.name 'imagenet': caption methods train on 'scenes' or a dataset format "
                r"\(coco, flickr30k_entities, referit, visual_genome\) with data.path")
    with pytest.raises(ConfigError, match=expected):
        dataset_spec(DataConfig(name="imagenet"))
    with pytest.raises(ConfigError, match="'multimnist': caption methods train on"):
        dataset_spec(DataConfig(name="multimnist"))  # registered, but a label dataset


def test_scenes_are_materialized_once_under_the_same_cache_key_as_before(cache):
    data = DataConfig(name="scenes", n_train=12, n_val=4, n_test=4, n_test_unseen=3)
    root = scenes_root(data)
    # The key the engine's scenes_root gave this config before it moved here: existing caches stay valid.
    assert root == cache / "scenes" / "scenes-3358133d1168" and (root / "Sentences").is_dir()
    assert [p.name for p in root.parent.iterdir()] == [root.name]  # no temporary folder left behind
    stamp = (root / "train.txt").stat().st_mtime_ns
    assert dataset_spec(data) == f"flickr30k_entities:{root}"
    assert (root / "train.txt").stat().st_mtime_ns == stamp
    assert len(read_dataset(dataset_spec(data), "test_unseen").records) == 3


def test_extra_test_splits():
    assert extra_test_splits(DataConfig(name="scenes", n_test_unseen=3)) == ["test_unseen"]
    assert extra_test_splits(DataConfig(name="scenes", n_test_unseen=0)) == []
    assert extra_test_splits(DataConfig(name="coco", path="/c", n_test_unseen=3)) == []
    assert extra_test_splits(DataConfig()) == []
    with pytest.raises(WeakgroundError, match="unknown dataset 'imagenet'"):
        extra_test_splits(DataConfig(name="imagenet"))


def test_unused_data_settings_are_the_changed_fields_the_dataset_never_reads():
    assert unused_data_settings(DataConfig()) == []
    assert unused_data_settings(DataConfig(name="scenes")) == []
    scenes = DataConfig(name="scenes", grid=3, path="/x", image_size=64, seed=2, n_test_unseen=5, noise_std=0.0)
    assert unused_data_settings(scenes) == ["grid", "noise_std", "path"]  # in DataConfig's field order
    multimnist = DataConfig(grid=3, n_train=10, image_size=64, eval_resize=False, n_test_unseen=1, path="/x")
    assert unused_data_settings(multimnist) == ["path", "image_size", "eval_resize", "n_test_unseen"]
    coco = DataConfig(name="coco", path="/c", n_val=7, n_train=5, seed=1, image_size=96)
    assert unused_data_settings(coco) == ["n_train", "seed"]
    with pytest.raises(WeakgroundError, match="unknown dataset"):
        unused_data_settings(DataConfig(name="imagenet"))


def test_label_splits_come_from_the_registry():
    assert class_names(DataConfig()) == [str(d) for d in range(10)]
    data = DataConfig(n_val=3)
    splits = build_splits(data, ("val",))
    assert list(splits) == ["val"] and len(splits["val"]) == 3
    assert splits["val"].images.tobytes() == dataset_source("multimnist").build_splits(
        data, ("val",), False)["val"].images.tobytes()
    for call in (build_splits, class_names):
        with pytest.raises(ConfigError, match="'scenes' is a caption_grounding dataset"):
            call(DataConfig(name="scenes"))
        with pytest.raises(WeakgroundError, match="unknown dataset 'imagenet'"):
            call(DataConfig(name="imagenet"))


def test_specs_accept_only_formats_with_a_reader():
    with pytest.raises(WeakgroundError, match="unknown format 'scenes'; known: " + ", ".join(FORMATS)):
        parse_spec("scenes:/tmp/x")  # generated: materialized first, then read as flickr30k_entities
    from weakground.data.readers import FORMATS as compat  # the old table's name, now a view of the registry

    assert sorted(compat) == FORMATS and "coco" in compat


def test_looking_datasets_up_imports_no_reader_and_no_torch():
    code = ("import sys; from weakground.data.sources import dataset_source, dataset_sources; "
            "[dataset_source(s.name) for s in dataset_sources()]; "
            "loaded = [m for m in ('torch', 'weakground.data.coco', 'weakground.data.scenes', "
            "'weakground.data.multimnist', 'weakground.data.flickr30k_entities') if m in sys.modules]; "
            "assert not loaded, loaded")
    subprocess.run([sys.executable, "-c", code], check=True)
