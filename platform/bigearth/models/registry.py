"""Model registry in timm's style: `create_model(name, **kwargs)`, `list_models()`, `@register_model`.

A builder returns a `bigearth.models.base.BigEarthModel`; `create_model` records the registry name and the
arguments on it, so its checkpoint can rebuild it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register a builder under its function name (`_` becomes `-`)."""
    _REGISTRY[fn.__name__.replace("_", "-")] = fn
    return fn


def accepts(name: str, param: str) -> bool:
    """Whether the builder of `name` declares the keyword `param` (not only through `**kwargs`)."""
    import inspect

    _load_builtin()
    if name not in _REGISTRY:
        return False
    p = inspect.signature(_REGISTRY[name]).parameters.get(param)
    return p is not None and p.kind is not inspect.Parameter.VAR_KEYWORD


def list_models() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)


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
    from bigearth.models import fusion  # noqa: F401  (registers the built-in models)
