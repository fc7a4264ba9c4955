"""Secrets stay secret (issue 22, section 6): credentials are masked wherever a config is stored or printed, secret
options have file and environment alternatives, and S3 secrets never travel in Ray task arguments."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bigearth.cli import build_parser
from bigearth.cli.common import secret_from_args, storage_from_args
from bigearth.core.secrets import MASK, Sealed, read_secret, redact, redact_text, redact_url, reveal
from bigearth.core.storage import StorageOptions
from bigearth.training.config import load_config
from helpers import REPO

TINY = str(REPO / "configs" / "tiny-cpu.yaml")
PASSWORD = "hunter2-Pw"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://alice:hunter2@mlflow.example/x?a=1", f"https://alice:{MASK}@mlflow.example/x?a=1"),
        ("postgresql://mlflow:pw@db:5432/mlflow", f"postgresql://mlflow:{MASK}@db:5432/mlflow"),
        ("https://ghp_tok3n@github.com/o/r", f"https://{MASK}@github.com/o/r"),
        ("postgresql://mlflow@db/mlflow", "postgresql://mlflow@db/mlflow"),  # no password: nothing to hide
        ("http://qdrant:6333/?api_key=abc&x=1", f"http://qdrant:6333/?api_key={MASK}&x=1"),
        (
            "https://b.s3.amazonaws.com/k?X-Amz-Credential=AKIA%2F1&X-Amz-Signature=deadbeef&X-Amz-Security-Token=t",
            f"https://b.s3.amazonaws.com/k?X-Amz-Credential=AKIA/1&X-Amz-Signature={MASK}&X-Amz-Security-Token={MASK}",
        ),
        ("https://h/p?token=t&password=p&sig=s", f"https://h/p?token={MASK}&password={MASK}&sig={MASK}"),
        ("s3://bucket/runs", "s3://bucket/runs"),
        ("/local/path", "/local/path"),
        ("sqlite:////data/mlflow.db", "sqlite:////data/mlflow.db"),
    ],
)
def test_redact_url_masks_passwords_tokens_and_signatures(url: str, expected: str) -> None:
    assert redact_url(url) == expected


def test_redact_masks_secret_fields_and_urls_nested_in_configs() -> None:
    cfg = {
        "tracking": {"tracking_uri": f"https://u:{PASSWORD}@mlflow/", "experiment": "e"},
        "storage": {"key": "AKIA", "secret": PASSWORD, "token": PASSWORD, "region": None},
        "qdrant": [{"url": "http://q:6333", "api_key": PASSWORD}, ("x", f"see https://u:{PASSWORD}@h/")],
        "MLFLOW_TRACKING_TOKEN": PASSWORD,
        "db-password": PASSWORD,
        "sealed": Sealed(PASSWORD),
        "tokens": 5,  # not a secret: only names like a secret are
    }
    out = redact(cfg)
    assert PASSWORD not in json.dumps(out)
    assert out["tracking"] == {"tracking_uri": f"https://u:{MASK}@mlflow/", "experiment": "e"}
    assert out["storage"] == {"key": "AKIA", "secret": MASK, "token": MASK, "region": None}
    assert (
        out["qdrant"][0] == {"url": "http://q:6333", "api_key": MASK}
        and out["qdrant"][1][1] == f"see https://u:{MASK}@h/"
    )
    assert out["tokens"] == 5 and cfg["storage"]["secret"] == PASSWORD  # a copy: the original is untouched
    config = load_config(TINY, [f"tracking.tracking_uri=https://u:{PASSWORD}@m/"])
    assert redact(config)["tracking"]["tracking_uri"] == f"https://u:{MASK}@m/"  # a pydantic model as its dump
    said = redact_text(f"cannot reach https://u:{PASSWORD}@m/api (refused)")
    assert said == f"cannot reach https://u:{MASK}@m/api (refused)"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://maps.googleapis.com/x?key=AIzaSyA-x&q=1", f"https://maps.googleapis.com/x?key={MASK}&q=1"),
        ("https://app/cb#access_token=ya29.abc&state=s", f"https://app/cb#access_token={MASK}&state=s"),
        ("https://h/p?a=1#frag", "https://h/p?a=1#frag"),
        ("https://h/p?secretAccessKey=s&sessionToken=t", f"https://h/p?secretAccessKey={MASK}&sessionToken={MASK}"),
    ],
)
def test_redact_url_masks_api_keys_and_fragment_tokens(url: str, expected: str) -> None:
    assert redact_url(url) == expected


def test_secret_names_in_any_case_and_the_azure_and_oauth_ones() -> None:
    names = ["secretKey", "secretAccessKey", "sessionToken", "clientSecret", "accessToken", "account_key"]
    names += ["AccountKey", "connection_string", "connectionString", "passphrase", "credential", "credentials"]
    names += ["AZURE_STORAGE_CONNECTION_STRING", "ssh_key_passphrase", "gcp_credentials"]
    cfg = {n: PASSWORD for n in names} | {"key": "AKIA", "keyId": "k", "region": "eu", "partition": "p"}
    out = redact(cfg)
    assert PASSWORD not in json.dumps(out), out
    assert out["key"] == "AKIA" and out["keyId"] == "k" and out["region"] == "eu" and out["partition"] == "p"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Authorization: Bearer abc.def", f"Authorization: Bearer {MASK}"),
        ("authorization=Basic dXNlcjpwdw==", f"authorization=Basic {MASK}"),
        ("AWS_SECRET_ACCESS_KEY=abc/DEF+1 region=eu", f"AWS_SECRET_ACCESS_KEY={MASK} region=eu"),
        ("login failed: password=hunter2, user=bob", f"login failed: password={MASK} user=bob"),
        ('{"clientSecret": "s3cr3t", "id": 1}', f'{{"clientSecret": {MASK}, "id": 1}}'),
        ("see https://h/p?token=t then x-api-key: k1", f"see https://h/p?token={MASK} then x-api-key: {MASK}"),
        ("epoch=3 loss: 0.5 tokens=12", "epoch=3 loss: 0.5 tokens=12"),
    ],
)
def test_redact_text_masks_secret_assignments_in_free_text(text: str, expected: str) -> None:
    assert redact_text(text) == expected
    assert redact(text) == expected


@settings(max_examples=150, deadline=2000, derandomize=True)
@given(
    scheme=st.sampled_from(["http", "https", "postgresql", "mysql+pymysql", "databricks"]),
    user=st.text("abcdefghijklmnopqrstuvwxyz0123456789._-", min_size=1, max_size=12),
    secret=st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ!$&'()*+,;=%", min_size=1, max_size=20),
    host=st.text("abcdefghijklmnopqrstuvwxyz0123456789.-", min_size=1, max_size=20),
    tail=st.text(max_size=30),
)
def test_redact_text_never_lets_a_password_through_and_never_fails(
    scheme: str, user: str, secret: str, host: str, tail: str
) -> None:
    """Hostile input: any text around a URL with credentials; the password (upper case and punctuation, which no
    other part of the URL has) never survives, whatever the text."""
    secret = "PW" + secret.replace("@", "").replace("/", "")
    text = f"{tail} {scheme}://{user}:{secret}@{host}/db?x=1 {tail}"
    out = redact_text(text)
    assert f":{secret}@" not in out
    redact_text(tail)  # never raises, whatever the text


def test_a_checkpoints_meta_never_holds_the_tracking_uris_password(tmp_path: Path) -> None:
    """The training loop's meta (the whole config in `config`) goes through `checkpoints.save`: the tracking URI's
    password is masked in meta.json, the rest of the config is kept."""
    from bigearth.models import checkpoints
    from bigearth.models.registry import create_model

    cfg = load_config(TINY, [f"tracking.tracking_uri=postgresql://mlflow:{PASSWORD}@db:5432/mlflow"])
    model = create_model("tiny", num_classes=19)
    meta = {"model": {"name": "tiny"}, "num_classes": 19, "epoch": 1, "config": cfg.model_dump(), "bands": []}
    checkpoints.save(str(tmp_path), model, meta)
    text = (tmp_path / checkpoints.META_FILE).read_text()
    assert PASSWORD not in text
    saved = json.loads(text)
    assert saved["config"]["tracking"]["tracking_uri"] == f"postgresql://mlflow:{MASK}@db:5432/mlflow"
    assert saved["config"]["optim"] == cfg.model_dump()["optim"] and saved["spec"]["num_classes"] == 19


def _cli(*argv: str):  # type: ignore[no-untyped-def]
    return build_parser().parse_args(["train", "--data", "d", "--storage", "s", *argv])


def test_the_s3_secret_from_a_file_the_environment_or_warned_from_the_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "BIGEARTH_S3_ANON"):
        monkeypatch.delenv(k, raising=False)
    secret_file = tmp_path / "s3-secret"
    secret_file.write_text(PASSWORD + "\n")
    opts = storage_from_args(_cli("--s3-key", "AKIA", "--s3-secret-file", str(secret_file)))
    assert opts.key == "AKIA" and opts.secret_text() == PASSWORD
    assert "warning" not in capsys.readouterr().err

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIA-env")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "from-env")
    opts = storage_from_args(_cli())
    assert (opts.key, opts.secret_text()) == ("AKIA-env", "from-env")
    assert "warning" not in capsys.readouterr().err

    opts = storage_from_args(_cli("--s3-key", "AKIA", "--s3-secret", PASSWORD))  # still works, with a warning
    assert opts.secret_text() == PASSWORD
    err = capsys.readouterr().err
    assert "--s3-secret on the command line is visible" in err and "--s3-secret-file" in err and PASSWORD not in err

    with pytest.raises(ValueError, match="--s3-secret and --s3-secret-file: give one"):
        storage_from_args(_cli("--s3-secret", "x", "--s3-secret-file", str(secret_file)))
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ValueError, match=r"--s3-secret-file: the secret file '.*empty' is empty"):
        storage_from_args(_cli("--s3-secret-file", str(tmp_path / "empty")))
    with pytest.raises(ValueError, match=r"--s3-secret-file: cannot read the secret file '.*nope'"):
        storage_from_args(_cli("--s3-secret-file", str(tmp_path / "nope")))


def test_api_keys_from_a_file_or_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from bigearth.client import Client

    monkeypatch.delenv("BIGEARTH_API_KEY", raising=False)
    monkeypatch.delenv("BIGEARTH_API_KEY_FILE", raising=False)
    key_file = tmp_path / "api-key"
    key_file.write_text(PASSWORD + "\n")
    a = build_parser().parse_args(["query", "--api-key-file", str(key_file), "patch", "x"])
    assert secret_from_args(a, "--api-key", None) == PASSWORD
    a = build_parser().parse_args(["query", "--api-key", PASSWORD, "patch", "x"])
    assert secret_from_args(a, "--api-key", None) == PASSWORD
    assert "--api-key on the command line is visible" in capsys.readouterr().err

    monkeypatch.setenv("BIGEARTH_API_KEY_FILE", str(key_file))
    with Client("http://127.0.0.1:9") as c:
        assert c.headers == {"X-API-Key": PASSWORD}
    monkeypatch.setenv("BIGEARTH_API_KEY", "from-env")  # the variable itself wins over the file it names
    with Client("http://127.0.0.1:9") as c:
        assert c.headers == {"X-API-Key": "from-env"}

    for command in ("index", "evaluate-retrieval"):  # the Qdrant key: a file, else $QDRANT_API_KEY (the engine's)
        flags = ["--checkpoint", "c"] if command == "index" else ["--out", "o"]
        a = build_parser().parse_args([command, *flags, "--data", "d", "--index", "i", "--api-key-file", str(key_file)])
        assert secret_from_args(a, "--api-key", None) == PASSWORD
    assert read_secret(None, None, "BIGEARTH_API_KEY", "--api-key") == "from-env"


def test_storage_options_and_sealed_values_never_print_their_secrets() -> None:
    opts = StorageOptions(key="AKIA", secret=PASSWORD, token="tok-" + PASSWORD)
    assert PASSWORD not in repr(opts) and PASSWORD not in str(Sealed(PASSWORD)) and PASSWORD not in repr(Sealed("x"))
    # without Ray a pickle carries the value (a plain process pool), and comes back equal
    back = pickle.loads(pickle.dumps(opts))
    assert back == opts and back.secret_text() == PASSWORD and reveal(back.token) == "tok-" + PASSWORD
    assert back.for_protocol("s3")["secret"] == PASSWORD and back.as_dict()["secret"] == PASSWORD


def test_a_commands_error_message_masks_credentials(capsys: pytest.CaptureFixture[str]) -> None:
    from bigearth.cli import main

    assert main(["reproduce-table", f"memory://reader:{PASSWORD}@h/evals"]) == 2
    err = capsys.readouterr().err
    assert PASSWORD not in err and f"memory://reader:{MASK}@h/evals: no <config name>/metrics.json" in err
