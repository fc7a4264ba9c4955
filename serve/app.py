"""The Serve application's import path for `serve run serve.app:build ...` from the repository root; the code
lives in the library (`bigearth.serving.app`), which is what serve/config.yaml and the KubeRay manifests import."""

from bigearth.serving.app import AppArgs, build

__all__ = ["AppArgs", "build"]
