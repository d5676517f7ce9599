import pytest

from weakground.config import ExperimentConfig, config_from_json, from_dict, load_config, preset_names, to_dict
from weakground.errors import ConfigError
from weakground.methods import Captioner, Grounder  # importing the package registers every method
from weakground.registry import METHODS


def test_bundled_presets_load():
    names = preset_names()
    assert {"quickstart", "cpu", "paper_scale"} <= set(names)
    for name in names:
        config = load_config(name)
        assert isinstance(config, ExperimentConfig)
        method = METHODS.get(config.method.name)  # a registered method, whose typed config takes the params
        assert issubclass(method, (Grounder, Captioner))
        from_dict(method.config_class, config.method.params)


def test_overrides_are_typed_and_checked():
    config = load_config("quickstart", ["train.epochs=7", "data.grid=3", "eval.box_threshold=0.4"])
    assert config.train.epochs == 7 and config.data.grid == 3 and config.eval.box_threshold == 0.4
    with pytest.raises(ConfigError, match="unknown key 'epoch'"):
        load_config("quickstart", ["train.epoch=7"])
    with pytest.raises(ConfigError, match="expected int"):
        load_config("quickstart", ["train.epochs=many"])
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_config("quickstart", ["train.epochs"])


def test_unknown_and_missing_keys_in_files_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ndata: {name: multimnist}\nmethod: {name: mcb_attention}\ntrain: {lrate: 0.1}\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: train: unknown key 'lrate'|bad.yaml.train: unknown key 'lrate'"):
        load_config(str(bad))
    missing = tmp_path / "missing.yaml"
    missing.write_text("name: x\ndata: {name: multimnist}\n")
    with pytest.raises(ConfigError, match="missing.yaml: missing key method.name"):
        load_config(str(missing))
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="broken.yaml"):
        load_config(str(broken))
    with pytest.raises(ConfigError, match="unknown preset"):
        load_config("no_such_preset")


def test_saved_config_round_trips_and_must_be_complete():
    import json

    config = load_config("quickstart")
    text = json.dumps(to_dict(config))
    assert config_from_json(text, "ckpt") == config
    data = to_dict(config)
    del data["train"]["lr"]
    with pytest.raises(ConfigError, match="missing key 'lr'"):
        config_from_json(json.dumps(data), "ckpt")


def test_checkpoints_from_before_a_later_key_load_with_its_old_behaviour():
    import json

    data = to_dict(load_config("multilevel_cpu"))
    assert data["data"]["eval_resize"] is True  # the default now
    del data["data"]["eval_resize"]
    assert config_from_json(json.dumps(data), "ckpt").data.eval_resize is False  # how older runs evaluated


def test_a_config_saved_by_an_earlier_version_still_loads():
    """The config saved in the committed `cpu_erasing` 2x2 benchmark checkpoint, written before `train.init_from`
    existed: every key added since must be in LATER_KEYS, or no earlier checkpoint would load."""
    from pathlib import Path

    from weakground.config import LATER_KEYS

    path = Path(__file__).parent / "fixtures" / "saved_configs" / "cpu_erasing_2x2_before_init_from.json"
    config = config_from_json(path.read_text(), str(path))
    assert config.train.init_from == "" and config.method.params["beta"] == 1.6
    assert ("train", "init_from") in LATER_KEYS
