"""The `bigearth` command's parsers in-process (no subprocess, no Ray): tests/e2e/test_cli.py runs the command."""

from __future__ import annotations

import pytest

from helpers import cli_options, cli_subparser


def test_serve_exposes_every_app_argument(capsys: pytest.CaptureFixture[str]) -> None:
    from bigearth.cli import main
    from bigearth.cli.serve import model_values
    from bigearth.serving.args import SECRET_FIELDS, AppArgs

    flags = cli_options(cli_subparser("serve"))
    fields = set(AppArgs.model_fields) - set(SECRET_FIELDS)
    assert {"--" + f.replace("_", "-") for f in fields} <= flags and not {"--qdrant-api-key"} & flags
    base = ["serve", "--checkpoint", "c", "--index", "i", "--data", "d"]
    a = cli_subparser("serve").parse_args(
        [*base[1:], "--replicas", "3", "--batch-wait-timeout-s", "0.05", "--classifier-max-replicas", "5"]
    )
    args = AppArgs(**model_values(a, AppArgs))
    assert (args.classifier_replicas, args.batch_wait_timeout_s, args.classifier_max_replicas) == (3, 0.05, 5)
    assert args.max_body_mb == AppArgs.model_fields["max_body_mb"].default  # unset flags keep the model's default
    # the model validates the flags and names the field it refuses, before anything starts
    assert main([*base, "--max-batch-size", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bigearth serve: error:") and "max_batch_size" in err and "greater than or equal to 1" in err
