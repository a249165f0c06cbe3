"""params.yaml validation: every class of bad value fails with one line naming the key."""

from __future__ import annotations

import pytest
import yaml

from cecl.config import METHODS, ConfigError, load_params, parse_params


def test_repository_params_are_valid() -> None:
    params = load_params("params.yaml")
    assert params.pretrain.methods[:4] == ["ce", "simclr", "supcon", "cecl"]
    assert sorted(params.pretrain.methods) == sorted(METHODS)  # the default trains every method
    assert params.method_options.cecl.weight == 0.5


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"pretrain": {"batchsize": 4}}, "pretrain.batchsize: unknown key"),
        ({"nonsense": 1}, "nonsense: unknown key"),
        ({"pretrain": {"batch_size": 1}}, "pretrain.batch_size"),
        ({"pretrain": {"epochs": "ten"}}, "pretrain.epochs"),
        ({"pretrain": {"methods": ["cecl", "moco"]}}, "unknown method 'moco'"),
        ({"method_options": {"cecl": {"temperature": 0}}}, "method_options.cecl.temperature"),
        ({"method_options": {"cecl": {"weight": 1.5}}}, "method_options.cecl.weight"),
        ({"method_options": {"cecl": {"variant": "soft"}}}, "method_options.cecl.variant"),
        ({"data": {"rhos": [0.99, 1.2]}}, "data.rhos: rho must be in (0, 1]"),
        ({"data": {"rhos": [0.0]}}, "data.rhos"),
        ({"data": {"source": "kaggle"}}, "data.source"),
        ({"device": "tpu"}, "device must be auto, cpu, cuda or cuda:N"),
        ({"augment": {"crop_scale": [0.9, 0.2]}}, "augment.crop_scale"),
        ({"data": {"val_size": 20000, "train_size": 50000}}, "exceed MNIST"),
    ],
)
def test_bad_values_name_the_key(raw: dict, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_params(raw)
    message = str(info.value)
    assert expected in message
    assert "\n" not in message
    assert message.startswith("params.yaml: ")


def test_file_errors(tmp_path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_params(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(bad)
    bad.write_text(yaml.safe_dump([1, 2]))
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_params(bad)
