"""A Python environment with the real `configilm` package, apart from the project's.

configilm 0.7.1 pins numpy < 2 (and Python < 3.12); the project runs numpy 2. So the test gets a venv of its own,
created once in `.venv-configilm/` (git-ignored) with configilm, numpy 1.x and what configilm imports that the project
does not have. torch and timm are the project's own (the same builds: what is compared is the code, not two torch
installs): a `.pth` file appends the project's site-packages after the venv's own, so the venv's numpy 1.x wins.
Packages are installed with `--no-deps` before that `.pth` exists, so pip never sees (or touches) the project's.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = Path(os.environ.get("BIGEARTH_CONFIGILM_VENV", ROOT / ".venv-configilm"))
#: configilm and the versions the reBEN training scripts lock beside it (poetry.lock at 90f7a58)
PACKAGES = [
    "configilm==0.7.1",
    "numpy==1.26.4",
    "transformers==4.45.2",
    "tokenizers==0.20.3",
    "huggingface_hub==0.25.2",
    "safetensors==0.4.5",
    "regex",
    "appdirs",
    "lmdb",
    "pandas<2.3",
    "python-dateutil",
    "pytz",
    "tzdata",
]


def python() -> Path:
    """The venv's interpreter, created on first use (about a minute; needs the package registry)."""
    exe = VENV / "bin" / "python"
    done = VENV / ".ready"
    if done.exists() and done.read_text() == "\n".join(PACKAGES) + "\n":
        return exe
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True)
    subprocess.run(
        [str(exe), "-m", "pip", "install", "--quiet", "--no-deps", *PACKAGES], check=True, capture_output=True
    )
    own = subprocess.run(
        [str(exe), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    Path(own, "zz-project.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    done.write_text("\n".join(PACKAGES) + "\n")
    return exe
