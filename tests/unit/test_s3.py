"""Storage options without a server (a real S3 server: tests/integration/test_s3.py)."""

from __future__ import annotations

import pytest


def test_storage_options_refuse_half_credentials() -> None:
    from bigearth.core.storage import StorageOptions

    with pytest.raises(ValueError, match="a key without a secret"):
        StorageOptions(key="k")
    with pytest.raises(ValueError, match="a session token without the temporary key"):
        StorageOptions(token="t")
    with pytest.raises(ValueError, match="anonymous access and a key"):
        StorageOptions(anon=True, key="k", secret="s")
    env = {"BIGEARTH_S3_ANON": "1", "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        anon = StorageOptions.from_env()  # exported keys do not break an anonymous set-up: anon wins
        assert anon.anon and anon.key is None
        assert StorageOptions.from_env(key="k2", secret="s2").key == "k2"
    opts = StorageOptions(key="k", secret="s3cr3t", token="sess10n")
    assert opts.for_protocol("s3")["token"] == "sess10n"
    assert "sess10n" not in repr(opts) and "s3cr3t" not in repr(opts)
