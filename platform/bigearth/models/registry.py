"""Model registry in timm's style: `create_model(name, **kwargs)`, `list_models()`, `@register_model`.

A builder returns a `bigearth.models.base.BigEarthModel`; `create_model` records the registry name and the
arguments on it, so its checkpoint can rebuild it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
_TASKS: dict[str, str] = {}  # registry name -> what its models produce (`ModelSpec.task`)


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register a builder under its function name (`_` becomes `-`), of a classification model."""
    _REGISTRY[fn.__name__.replace("_", "-")] = fn
    _TASKS[fn.__name__.replace("_", "-")] = "classification"
    return fn


def register_segmentation_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """`register_model` for a builder of segmentation models (`bigearth.models.segmentation`)."""
    register_model(fn)
    _TASKS[fn.__name__.replace("_", "-")] = "segmentation"
    return fn


def accepts(name: str, param: str) -> bool:
    """Whether the builder of `name` declares the keyword `param` (not only through `**kwargs`)."""
    import inspect

    _load_builtin()
    if name not in _REGISTRY:
        return False
    p = inspect.signature(_REGISTRY[name]).parameters.get(param)
    return p is not None and p.kind is not inspect.Parameter.VAR_KEYWORD


def task_of(name: str) -> str:
    """What the models of a registered name produce (`classification`, `segmentation`), without building one."""
    _load_builtin()
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; registered: {', '.join(sorted(_REGISTRY))}")
    return _TASKS.get(name, "classification")


def list_models(task: str | None = None) -> list[str]:
    """Registered names, all or those of one task (`classification`, `segmentation`)."""
    _load_builtin()
    return sorted(n for n in _REGISTRY if task is None or _TASKS.get(n) == task)


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model; `None` keyword arguments are dropped so generic CLI/config options never break
    a builder that does not take them."""
    _load_builtin()
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; registered: {', '.join(sorted(_REGISTRY))}")
    args = {k: v for k, v in kwargs.items() if v is not None}
    model: Any = _REGISTRY[name](**args)
    model.registry_name = name
    model.builder_kwargs = {k: v for k, v in args.items() if k != "num_classes"}
    return model  # type: ignore[no-any-return]


def _load_builtin() -> None:
    from bigearth.models import fusion, segmentation  # noqa: F401  (register the built-in models)
