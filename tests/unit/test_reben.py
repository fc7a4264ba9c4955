"""The reBEN import without the configilm reference: a malformed checkpoint is refused naming the file and what is
wrong. (Against the real configilm, and evaluated and indexed: tests/integration/test_reben.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bigearth.models.checkpoints import CheckpointError
from bigearth.models.reben import import_checkpoint


def test_import_errors_name_the_file(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"timm_model_name": "resnet18", "channels": 7, "classes": 19}))
    (tmp_path / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match=r"model\.safetensors: unreadable safetensors"):
        import_checkpoint(str(tmp_path), str(tmp_path / "out"))
    from safetensors.torch import save_file

    save_file({"model.vision_encoder.fc.weight": torch.zeros(19, 4)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match="7 channels"):
        import_checkpoint(str(tmp_path), str(tmp_path / "out"))
    (tmp_path / "config.json").write_text(json.dumps({"timm_model_name": "resnet18", "channels": 2, "classes": 19}))
    with pytest.raises(CheckpointError, match="does not fit timm resnet18"):
        import_checkpoint(str(tmp_path), str(tmp_path / "out"))
    (tmp_path / "config.json").write_text(json.dumps({"channels": 2}))
    with pytest.raises(CheckpointError, match="no 'timm_model_name'"):
        import_checkpoint(str(tmp_path), str(tmp_path / "out"))
