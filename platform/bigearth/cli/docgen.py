"""docs/configuration.md, generated from the pydantic models that parse the configs (so the page cannot drift:
tests/unit/test_docs.py compares). Regenerate: `python -m bigearth.cli.docgen > docs/configuration.md`."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

HEADER = """# Configuration reference

Generated from the pydantic models that parse the configurations (`python -m bigearth.cli.docgen >
docs/configuration.md`); `tests/unit/test_docs.py` fails when this page and the code disagree.

## Training configs (`configs/*.yaml`, `jobs/train.py --config FILE --set section.key=value`)

Every key is optional (the default applies); an unknown key is an error naming it. Shipped configs:
`tiny-cpu.yaml` (tests and the demo); `reben/<arch>-{s1,s2,all}.yaml` (the published reBEN models and their recipe)
and `bigearthnet-mm/` (the v1 models), docs/reproduce.md; `resnet50-s1s2-early.yaml` (the papers' early fusion with
this project's defaults), `resnet50-s1s2-late.yaml` (this project's late-fusion extension: S1-only, S2-only and
cross-modal vectors), `resnet50-s2.yaml`, `resnet50-s1.yaml`.
"""

SERVE = """
## Serve application arguments (`serve/config.yaml` `args:`, `serve run ... key=value`, `AppArgs`)
"""


def _type(annotation: Any) -> str:
    text = str(annotation).replace("typing.", "").replace("<class '", "").replace("'>", "")
    return text.replace("NoneType", "None").replace("|", "\\|")


def _default(field: Any) -> str:
    if field.default is PydanticUndefined:
        return "**required**" if field.default_factory is None else f"`{field.default_factory()!r}`"
    return f"`{field.default!r}`"


def table(model: type[BaseModel], prefix: str = "") -> str:
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for name, field in model.model_fields.items():
        desc = (field.description or "").replace("|", "\\|")
        rows.append(f"| `{prefix}{name}` | `{_type(field.annotation)}` | {_default(field)} | {desc} |")
    return "\n".join(rows) + "\n"


def configuration_md() -> str:
    from bigearth.serving.app import AppArgs
    from bigearth.training.config import TrainConfig

    parts = [HEADER]
    for section, field in TrainConfig.model_fields.items():
        model = field.annotation
        assert isinstance(model, type) and issubclass(model, BaseModel)
        doc = (model.__doc__ or "").strip()
        parts.append(f"\n### `{section}`\n\n" + (f"{doc}\n\n" if doc else "") + table(model, f"{section}."))
    parts.append(SERVE + "\n" + table(AppArgs))
    return "".join(parts)


if __name__ == "__main__":
    print(configuration_md(), end="")
