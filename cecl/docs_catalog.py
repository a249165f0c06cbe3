"""The methods and datasets tables of the docs, generated from the plug-in registries (never typed by hand).

``methods-table`` (docs/methods.md): one row per registered method (cecl/methods registry, in table
order): the registered loss it trains with (cecl/losses registry, found among the built method's modules),
whether it uses the labels, its family (the module that registers it), views per image, whether it sizes
its own projector, and its options with their defaults. "Uses labels" is measured, not declared: the
method is built twice from one seed on a tiny encoder and its loss is computed on the same views with two
different labellings; a method whose loss does not change ignores the labels.

``datasets-table`` (docs/datasets.md): one row per registered family (cecl/datasets registry): its kind
(bias when the spec has a bias attribute, else classification; also a transfer target when a profile
transfers to it), evaluator, stored image shape and classes, the split sizes of one profile entry (the
plug-in's expected sizes) and that entry's description, and the profiles (profiles/*.yaml) that use it.

Both import torch and every plug-in: they run in ``make docs-results`` (cecl/docs_blocks.py), never in a
stage. Every method trains under both protocols (``pretrain.protocol``: linear_probe, or joint, which
wraps any method with a classifier head: cecl/methods/joint.py), so protocol is no column.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

# What each registering module's methods have in common (the module names come from the registry).
FAMILIES = {
    "cecl.methods.cross_entropy": "supervised reference (classifier head)",
    "cecl.methods.contrastive": "projection head + a [B, V, D] loss",
    "cecl.methods.queue": "momentum encoder + queue of negatives",
    "cecl.methods.siamese": "predictor, no negatives",
    "cecl.methods.nnclr": "nearest-neighbour positives",
    "cecl.methods.swav": "online clustering (prototypes)",
}
# The tiny setting in which "uses labels" is measured: 8 images of 3x16x16, 4 classes, 2 views.
PROBE_BATCH, PROBE_CLASSES, PROBE_SIZE, STEPS = 8, 4, 16, 2


def _row(cells: Iterable[str]) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"


def _options(schema: Any) -> str:
    """``name=default`` of every option of a pydantic schema, or '-'."""
    parts = [f"`{name}={field.default!r}`" for name, field in schema.model_fields.items()]
    return ", ".join(parts) or "-"


def _build(name: str, seed: int):
    import torch

    from cecl.methods import MethodContext, build_method
    from cecl.models.backbones import build_backbone

    torch.manual_seed(seed)

    def encoder():
        return build_backbone("small_cnn", 3, [0.5] * 3, [0.5] * 3, {"width": 4})

    context = MethodContext(encoder, proj_dim=8, proj_hidden=None, n_classes=PROBE_CLASSES, views=2)
    return build_method(name, context)


def uses_labels(name: str) -> bool:
    """Whether method ``name``'s training losses over STEPS steps change when only the labels do (module
    doc); two steps, so that a queue of the first step's keys and labels (SupMoCo) takes part."""
    import torch

    generator = torch.Generator().manual_seed(0)
    views = torch.rand(PROBE_BATCH, 2, 3, PROBE_SIZE, PROBE_SIZE, generator=generator)
    # Two images per class in both labellings, paired differently ({0, 4}, ... vs {0, 1}, ...): a loss that
    # depends only on which images share a class (SupCon) sees a change, as one that reads the values does.
    labels = torch.arange(PROBE_BATCH) % PROBE_CLASSES
    other = torch.arange(PROBE_BATCH) // 2 % PROBE_CLASSES
    runs = []
    for labelling in (labels, other):
        method = _build(name, 0)
        method.train()
        torch.manual_seed(1)
        steps = []
        for _ in range(STEPS):
            batch = views[:, : method.n_views]
            steps.append(float(method.training_loss(batch, labelling).detach()))
            method.after_step()
        runs.append(steps)
    return runs[0] != runs[1]


def _loss_names(method: Any) -> list[str]:
    """The registered losses (cecl/losses registry) among the method's modules."""
    from cecl.losses import registry

    by_class = {factory: name for name, factory in registry._REGISTRY.items() if isinstance(factory, type)}
    found = [by_class[type(module)] for module in method.modules() if type(module) in by_class]
    return list(dict.fromkeys(found))


def methods_table(root: Path) -> str:
    """The methods table (module doc); ``root`` is unused: the registries are the package's own."""
    from cecl.methods import available, builds_own_heads, options_schemas
    from cecl.methods.registry import _BUILDERS

    schemas = options_schemas()
    lines = [
        _row(["method", "loss (registry)", "uses labels", "family", "views", "own projector", "options"]),
        "|:--|:--|:--|:--|--:|:--|:--|",
    ]
    for name in available():
        method = _build(name, 0)
        losses = _loss_names(method)
        family = FAMILIES.get(_BUILDERS[name].__module__, f"`{_BUILDERS[name].__module__}`")
        lines.append(
            _row(
                [
                    f"`{name}`",
                    ", ".join(f"`{loss}`" for loss in losses) or f"its own ({type(method).__name__})",
                    "yes" if uses_labels(name) else "no",
                    family,
                    str(method.n_views),
                    "yes" if builds_own_heads(name) else "no",
                    _options(schemas[name]),
                ]
            )
        )
    return "\n".join(lines)


def _profiles(root: Path) -> list[tuple[str, Any]]:
    from cecl.config import load_params

    paths = sorted((root / "profiles").glob("*.yaml"))
    if not paths:
        raise ValueError(f"no profiles/*.yaml under {root}")
    return [(path.stem, load_params(path)) for path in paths]


def datasets_table(root: Path) -> str:
    """The datasets table (module doc), from the registry and profiles/*.yaml under ``root``."""
    from cecl.datasets import families

    profiles = _profiles(root)
    lines = [
        _row(["family", "kind", "evaluator", "images", "sizes (train / val / test)", "e.g.", "profiles"]),
        "|:--|:--|:--|:--|:--|:--|:--|",
    ]
    for family, cls in families().items():
        users, targets, spec = [], False, None
        for stem, params in profiles:
            entries = [name for name, options in params.datasets.items() if options.family == family]
            if entries:
                users.append(stem)
                spec = spec or params.spec(entries[0])
                transfer = getattr(params, "transfer", None)
                targets = targets or any(e in (getattr(transfer, "targets", None) or ()) for e in entries)
        if spec is None:
            try:
                spec = cls(family, cls.Options.model_validate({"family": family}))
            except ValueError:
                spec = None
        kind = "-" if spec is None else ("bias" if spec.bias_attribute() is not None else "classification")
        if targets:
            kind += ", transfer target"
        if spec is None:
            cells = ["-", f"{cls.channels} channels, {cls.n_classes} classes", "-", "no profile uses it"]
        else:
            height, width = spec.image_size
            sizes = spec.expected_sizes()
            split = " / ".join(f"{sizes.get(s, 0):,}".replace(",", " ") for s in ("train", "val", "test"))
            bound = " (at most)" if spec.sizes_are_upper_bounds() else ""
            cells = [
                f"`{spec.evaluator().name}`",
                f"{spec.channels}x{height}x{width}, {spec.n_classes} classes",
                f"{split}{bound}",
                f"`{spec.name}`: {spec.describe()}",
            ]
        lines.append(_row([f"`{family}`", kind, *cells, ", ".join(users) or "-"]))
    return "\n".join(lines)
