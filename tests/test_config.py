"""params.yaml validation: the repository's files validate, and every class of bad value fails with one
line naming the key (``params.yaml: <dotted key>: ...``).

The bad-input cases start from a small self-contained mapping (BASE), not from params.yaml: users
edit params.yaml (methods, entries), and no test here depends on what it lists.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from cecl.config import ConfigError, Params, load_params, parse_params
from cecl.datasets import families
from cecl.methods import available as available_methods
from cecl.models import available_backbones
from cecl.runs import RunKey, TransferKey
from tests.helpers import committed

ROOT = Path(__file__).resolve().parent.parent
FIRST_METHOD = available_methods()[0]  # whatever is registered first; nothing depends on which

BASE: dict = {
    "seeds": [0, 1],
    "datasets": {
        "bm": {"family": "biased_mnist", "rho": 0.95, "train_size": 100, "val_size": 50},
        "bm2": {"family": "biased_mnist", "rho": 0.99, "train_size": 100, "val_size": 50},
        "fm": {"family": "fashion_mnist", "train_size": 100, "val_size": 50},
    },
    "method_options": {FIRST_METHOD: {}},  # every pretrained method has a section (DVC tracks it)
    "pretrain": {"datasets": ["bm", "fm"], "methods": [FIRST_METHOD]},
    "sweep": {"dataset": "bm"},
}


def _raw(change: Callable[[dict], object] | None = None) -> dict:
    raw = copy.deepcopy(BASE)
    if change is not None:
        change(raw)
    return raw


def _error(raw: dict) -> str:
    with pytest.raises(ConfigError) as info:
        parse_params(raw)
    message = str(info.value)
    assert "\n" not in message, message
    assert message.startswith("params.yaml: "), message
    return message


# ----------------------------------------------------------------------------- the repository's files


def test_cpu_profile_is_params_yaml_and_both_validate() -> None:
    params_yaml = yaml.safe_load(committed(ROOT, "params.yaml"))
    cpu = yaml.safe_load(committed(ROOT, "profiles/cpu.yaml"))
    assert cpu == params_yaml  # the committed params.yaml is the CPU profile (`make repro` runs it)
    for path in (ROOT / "profiles" / "cpu.yaml",):
        params = load_params(path)
        assert isinstance(params, Params)
        # Internally consistent, whatever methods and entries the user listed:
        assert set(params.pretrain.methods) <= set(available_methods())
        assert set(params.pretrain.datasets) <= set(params.datasets)
        assert params.sweep.dataset in params.datasets
        assert len(params.runs()) == len(params.pretrain.datasets) * len(params.pretrain.methods) * len(
            params.seeds
        )
        for name, entry in params.datasets.items():
            assert entry.family in families()
            spec = params.spec(name)
            assert spec.name == name and spec.family == entry.family
            assert params.recipe(name).augment == spec.augment


def test_the_base_mapping_validates_with_defaults() -> None:
    params = parse_params(_raw())
    assert params.runs() == [RunKey(d, FIRST_METHOD, s) for d in ("bm", "fm") for s in (0, 1)]
    assert params.spec("bm").channels == 3 and params.spec("fm").channels == 1
    assert params.datasets["bm"].val_rho == 0.1  # the family's default, filled in
    # every registered method gets its (default) options, listed in params.yaml or not
    assert set(params.method_options) == set(available_methods())
    assert params.transfers() == []


def test_overrides_merge_into_one_entrys_recipe_only() -> None:
    params = parse_params(_raw(lambda r: r["datasets"]["fm"].update(overrides={"pretrain": {"epochs": 3}})))
    assert params.recipe("fm").pretrain.epochs == 3
    assert params.recipe("fm").pretrain.batch_size == params.pretrain.batch_size  # the rest is global
    assert params.recipe("bm").pretrain.epochs == params.pretrain.epochs != 3


def test_transfer_pairs_between_same_channel_entries() -> None:
    params = parse_params(
        _raw(
            lambda r: (
                r["pretrain"].update(datasets=["bm", "bm2"]),
                r.update(transfer={"sources": ["bm"], "targets": ["bm", "bm2"]}),
            )
        )
    )
    assert params.transfer_pairs() == [("bm", "bm2")]  # an entry is not transferred to itself
    assert params.transfers() == [TransferKey("bm", "bm2", FIRST_METHOD, s) for s in (0, 1)]


def test_colour_jitter_on_a_three_channel_entry_is_fine() -> None:
    params = parse_params(_raw(lambda r: r["datasets"]["bm"].update(augment={"color_jitter": 0.5})))
    assert params.spec("bm").augment.color_jitter == 0.5


def test_check_run() -> None:
    params = parse_params(_raw())
    params.check_run(RunKey("bm", FIRST_METHOD, 0))
    for key, fragment in (
        (RunKey("bm2", FIRST_METHOD, 0), "pretrain.datasets"),
        (RunKey("bm", "no_such_method", 0), "pretrain.methods"),
        (RunKey("bm", FIRST_METHOD, 7), "seeds"),
    ):
        with pytest.raises(ValueError, match=fragment) as info:
            params.check_run(key)
        assert "\n" not in str(info.value)


# ----------------------------------------------------------------------------- bad input


def _add_entry(raw: dict, name: str, entry: dict) -> None:
    raw["datasets"][name] = entry


BAD: list[tuple[str, Callable[[dict], object], str, str]] = [
    # (case id, change to BASE, the key the message must start with, a fragment it must contain)
    ("unknown family", lambda r: _add_entry(r, "x", {"family": "cifar11"}), "datasets.x.family", "'cifar11'"),
    (
        "missing family",
        lambda r: _add_entry(r, "x", {"rho": 0.5}),
        "datasets.x.family",
        "unknown dataset family",
    ),
    (
        "family's unknown option",
        lambda r: r["datasets"]["fm"].update(rho=0.5),
        "datasets.fm.rho",
        "unknown key",
    ),
    (
        "pretrain.datasets entry",
        lambda r: r["pretrain"].update(datasets=["bm", "nope"]),
        "pretrain.datasets",
        "unknown dataset entry 'nope'",
    ),
    (
        "sweep.dataset entry",
        lambda r: r["sweep"].update(dataset="nope"),
        "sweep.dataset",
        "unknown dataset entry 'nope'",
    ),
    (
        "transfer.targets entry",
        lambda r: r.update(transfer={"sources": ["bm"], "targets": ["nope"]}),
        "transfer.targets",
        "unknown dataset entry 'nope'",
    ),
    (
        "transfer source not pretrained",
        lambda r: r.update(transfer={"sources": ["bm2"], "targets": ["bm"]}),
        "transfer.sources",
        "'bm2' is not pretrained",
    ),
    (
        "transfer 3 -> 1 channel",
        lambda r: r.update(transfer={"sources": ["bm"], "targets": ["fm"]}),
        "transfer.targets",
        "'fm' has 1 channel",
    ),
    (
        "transfer 1 -> 3 channels",
        lambda r: r.update(transfer={"sources": ["fm"], "targets": ["bm"]}),
        "transfer.targets",
        "'bm' has 3 channel",
    ),
    (
        "transfer 28 px -> 32 px",
        lambda r: r.update(
            datasets={**r["datasets"], "c101": {"family": "caltech101", "image_size": 32}},
            transfer={"sources": ["bm"], "targets": ["c101"]},
        ),
        "transfer.targets",
        "'c101' stores [32, 32] px images but encoders pretrained on 'bm' take [28, 28]",
    ),
    (
        "colour jitter on 1 channel",
        lambda r: r["datasets"]["fm"].update(augment={"color_jitter": 0.4}),
        "datasets.fm.augment",
        "3-channel",
    ),
    (
        "grayscale on 1 channel",
        lambda r: r["datasets"]["fm"].update(augment={"grayscale_p": 0.2}),
        "datasets.fm.augment",
        "3-channel",
    ),
    ("seeds empty", lambda r: r.update(seeds=[]), "seeds", "at least 1"),
    ("seeds duplicated", lambda r: r.update(seeds=[0, 1, 0]), "seeds", "0 appears twice"),
    (
        "unknown method",
        lambda r: r["pretrain"].update(methods=[FIRST_METHOD, "no_such_method"]),
        "pretrain.methods",
        "unknown method 'no_such_method'",
    ),
    (
        "duplicated method",
        lambda r: r["pretrain"].update(methods=[FIRST_METHOD] * 2),
        "pretrain.methods",
        "twice",
    ),
    (
        "unknown method_options method",
        lambda r: r["method_options"].update(no_such_method={}),
        "method_options.no_such_method",
        "unknown method",
    ),
    (
        "pretrained method without a method_options section",
        lambda r: r.pop("method_options"),
        f"method_options.{FIRST_METHOD}",
        "missing",
    ),
    (
        "unknown method_options key",
        lambda r: r.update(method_options={FIRST_METHOD: {"no_such_option": 1}}),
        f"method_options.{FIRST_METHOD}.no_such_option",
        "unknown key",
    ),
    (
        "backbone width 0",
        lambda r: r.update(model={"backbone": "small_cnn", "backbone_options": {"width": 0}}),
        "model.backbone_options.width",
        "greater than or equal to 1",
    ),
    (
        "backbone unknown option",
        lambda r: r.update(model={"backbone": "small_cnn", "backbone_options": {"depth": 3}}),
        "model.backbone_options.depth",
        "unknown key",
    ),
    (
        "unknown backbone",
        lambda r: r.update(model={"backbone": "vgg11"}),
        "model.backbone",
        "unknown backbone 'vgg11'",
    ),
    ("lr inf", lambda r: r["pretrain"].update(optimizer={"lr": math.inf}), "pretrain.optimizer.lr", "finite"),
    ("lr nan", lambda r: r["pretrain"].update(optimizer={"lr": math.nan}), "pretrain.optimizer.lr", "finite"),
    (
        "NaN sweep temperature",
        lambda r: r["sweep"].update(grids={"cecl": {"temperature": [0.1, math.nan]}}),
        "sweep.grids.cecl.temperature.1",
        "finite",
    ),
    ("rho above 1", lambda r: r["datasets"]["bm"].update(rho=1.5), "datasets.bm.rho", "1.5"),
    ("rho 0", lambda r: r["datasets"]["bm"].update(rho=0.0), "datasets.bm.rho", "greater than 0"),
    ("val_rho above 1", lambda r: r["datasets"]["bm"].update(val_rho=1.01), "datasets.bm.val_rho", "1.01"),
    ("rho missing", lambda r: r["datasets"]["bm"].pop("rho"), "datasets.bm.rho", "Field required"),
    (
        "val_size + train_size too big (MNIST)",
        lambda r: r["datasets"]["bm"].update(val_size=20000, train_size=40001),
        "datasets.bm",
        "val_size + train_size exceed MNIST",
    ),
    (
        "val_size + train_size too big (Fashion-MNIST)",
        lambda r: r["datasets"]["fm"].update(val_size=10000, train_size=50001),
        "datasets.fm",
        "val_size + train_size exceed Fashion-MNIST",
    ),
    (
        "milestones with cosine",
        lambda r: r["pretrain"].update(optimizer={"cosine": True, "milestones": [3, 6]}),
        "pretrain.optimizer",
        "milestones (step decay) and cosine exclude each other",
    ),
    (
        "unknown override section",
        lambda r: r["datasets"]["fm"].update(overrides={"sweep": {"epochs": 1}}),
        "datasets.fm.overrides.sweep",
        "unknown key",
    ),
    (
        "bad override value",
        lambda r: r["datasets"]["fm"].update(overrides={"pretrain": {"epochs": 0}}),
        "datasets.fm.overrides.pretrain.epochs",
        "greater than or equal to 1",
    ),
    ("unknown top-level key", lambda r: r.update(nonsense=1), "nonsense", "unknown key"),
    ("unknown nested key", lambda r: r["pretrain"].update(batchsize=4), "pretrain.batchsize", "unknown key"),
    ("batch_size 1", lambda r: r["pretrain"].update(batch_size=1), "pretrain.batch_size", "(got 1)"),
    ("device", lambda r: r.update(device="tpu"), "device", "auto, cpu, cuda or cuda:N"),
    ("sweep missing", lambda r: r.pop("sweep"), "sweep", "required key missing"),
]


def test_a_sweep_axis_comes_from_the_methods_own_options() -> None:
    """No method list in the config: a method is sweepable over the axes its options schema has."""
    assert _error(_raw(lambda r: r["sweep"].update(grids={"supcon": {"weight": [0.5]}}))).endswith(
        "supcon has no sweepable option 'weight' (sweepable: ['temperature'])"
    )
    assert "weight value 1.5" in _error(_raw(lambda r: r["sweep"].update(grids={"cecl": {"weight": [1.5]}})))
    assert "unknown method 'nope'" in _error(
        _raw(lambda r: r["sweep"].update(grids={"nope": {"weight": [1]}}))
    )
    parse_params(_raw(lambda r: r["sweep"].update(grids={"dcl": {"temperature": [0.1, 0.2]}})))


@pytest.mark.parametrize(
    ("change", "key", "fragment"), [case[1:] for case in BAD], ids=[case[0] for case in BAD]
)
def test_bad_values_fail_with_one_line_naming_the_key(change, key: str, fragment: str) -> None:
    message = _error(_raw(change))
    assert message.startswith(f"params.yaml: {key}: "), message
    assert fragment in message, message


def test_a_sweep_temperature_grid_with_inf_or_nonpositive_values() -> None:
    for values, fragment in (([0.1, math.inf], "finite"), ([0.0, 0.1], "greater than 0")):
        message = _error(_raw(lambda r, v=values: r["sweep"].update(grids={"cecl": {"temperature": v}})))
        assert "sweep.grids" in message and fragment in message, message


YAML_NON_FINITE = [
    # (where in BASE, the YAML spelling written there, the key the message must name)
    (("pretrain", "optimizer", "lr"), ".inf", "pretrain.optimizer.lr"),
    (("pretrain", "optimizer", "weight_decay"), "-.inf", "pretrain.optimizer.weight_decay"),
    (("probe", "l2_min"), ".nan", "probe.l2_min"),
    (("sweep", "grids", "cecl", "temperature"), "[0.1, .nan]", "sweep.grids.cecl.temperature.1"),
    (("datasets", "bm", "rho"), ".nan", "datasets.bm.rho"),
]


@pytest.mark.parametrize(("where", "spelling", "key"), YAML_NON_FINITE)
def test_yaml_infinities_and_nans_are_rejected(tmp_path: Path, where: tuple, spelling: str, key: str) -> None:
    """The YAML spellings (.inf, -.inf, .nan) reach the schema as floats and are refused there."""
    raw = _raw()
    node = raw
    for part in where[:-1]:
        node = node.setdefault(part, {})
    node[where[-1]] = "SPELLING"
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw).replace("SPELLING", spelling))
    with pytest.raises(ConfigError) as info:
        load_params(path)
    message = str(info.value)
    assert message.startswith(f"{path}: {key}: "), message
    assert "finite" in message and "\n" not in message, message


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_params(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("datasets: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML") as info:
        load_params(bad)
    assert "\n" not in str(info.value)
    bad.write_text(yaml.safe_dump([1, 2]))
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_params(bad)


def test_registries_are_what_the_schema_checks_against() -> None:
    """The schema is assembled from the registries: every registered backbone and family validates."""
    for backbone in available_backbones():
        parse_params(_raw(lambda r, b=backbone: r.update(model={"backbone": b})))
    assert {"biased_mnist", "fashion_mnist"} <= set(families())


@pytest.mark.parametrize("name", ["bmnist_0.9", "bm-1", "bm 1"])
def test_dataset_entry_names_that_dvc_cannot_address_are_rejected(name: str) -> None:
    """DVC reads params keys as dotted paths: `datasets.bmnist_0.9` would be datasets -> bmnist_0 -> 9."""
    raw = _raw(lambda r: r["datasets"].update({name: {"family": "biased_mnist", "rho": 0.9}}))
    message = _error(raw)
    assert message.startswith("params.yaml: datasets: entry names are letters, digits and '_' only"), message
    assert "\n" not in message


def test_a_projector_width_that_would_not_reach_a_method_is_refused() -> None:
    """simsiam, byol and nnclr size their projectors from method_options; a set model.proj_hidden (global
    or an entry's override) with one of them pretrained fails, naming the key and the methods."""

    def with_methods(*methods: str) -> Callable[[dict], None]:
        def change(r: dict) -> None:
            r["pretrain"]["methods"] = [FIRST_METHOD, *methods]
            r["method_options"].update({m: {} for m in methods})
            r["model"] = {"proj_hidden": 64}

        return change

    message = _error(_raw(with_methods("byol", "nnclr")))
    assert message.startswith("params.yaml: model.proj_hidden: 64 would not reach byol, nnclr,"), message

    def override(r: dict) -> None:
        with_methods("simsiam")(r)
        r["model"] = {}
        r["datasets"]["fm"]["overrides"] = {"model": {"proj_hidden": 32}}

    message = _error(_raw(override))
    assert message.startswith(
        "params.yaml: datasets.fm.overrides.model.proj_hidden: 32 would not reach simsiam"
    ), message
    # Methods whose projector reads it, and byol with proj_hidden left null, are fine.
    assert parse_params(_raw(with_methods("supcon"))).model.proj_hidden == 64
    parse_params(_raw(lambda r: (with_methods("byol")(r), r["model"].update(proj_hidden=None))))
