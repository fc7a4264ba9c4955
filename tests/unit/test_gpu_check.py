"""bench/gpu_check.py's GPU-only helpers without a GPU: the utilisation sampler against a fake NVML module and a
fake nvidia-smi, the data step's sizing arithmetic, the timed windows' sizing, the full held batch, the partial
figures and the logs' archive; bench/gpu_preflight.py on the CPU; bench/carried_check.py's filter; the device
recipe's commands within the device tool's 2,000 characters."""

from __future__ import annotations

import re
import sys
import tarfile
import types
from pathlib import Path
from typing import Any

import pytest

from helpers import REPO, bench_module

CHECK = bench_module("gpu_check")
PREFLIGHT = bench_module("gpu_preflight")
CARRIED = bench_module("carried_check")
UUID = "GPU-6a3b0c1d-0000-1111-2222-333344445555"


def fake_nvml(monkeypatch: pytest.MonkeyPatch, fail: bool = False) -> dict[str, Any]:
    """A pynvml module in sys.modules whose device, found by UUID only, reads 40, 60, 80, ... %."""
    seen: dict[str, Any] = {"uuids": [], "reads": 0}

    def by_uuid(uuid: str) -> str:
        seen["uuids"].append(uuid)
        return "handle"

    def by_index(i: int) -> str:
        raise AssertionError("opened by index")

    def rates(handle: str) -> Any:
        seen["reads"] += 1
        if fail:
            raise RuntimeError("NVML_ERROR_GPU_IS_LOST")
        return types.SimpleNamespace(gpu=40 + 20 * (seen["reads"] % 3))

    nvml = types.SimpleNamespace(
        nvmlInit=lambda: None,
        nvmlDeviceGetHandleByUUID=by_uuid,
        nvmlDeviceGetHandleByIndex=by_index,
        nvmlDeviceGetUtilizationRates=rates,
    )
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    return seen


def fake_nvidia_smi(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, body: str) -> Path:
    """No NVML binding, and an nvidia-smi script first on PATH that logs its arguments and runs `body`."""
    monkeypatch.setitem(sys.modules, "pynvml", None)  # `import pynvml` raises ImportError
    script = tmp_path / "bin" / "nvidia-smi"
    script.parent.mkdir()
    script.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/args\n{body}\n')
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{script.parent}:/usr/bin:/bin")
    return tmp_path / "args"


def sample(uuid: str = UUID, seconds: float = 0.4, skip_s: float = 0.0) -> Any:
    import time

    with CHECK.GpuSampler(True, uuid, interval=0.02, skip_s=skip_s) as gpu:
        time.sleep(seconds)
    return gpu


def test_sampler_reads_nvml_by_the_gpus_uuid(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = fake_nvml(monkeypatch)
    gpu = sample()
    assert seen["uuids"] == [UUID] and gpu.error is None
    assert len(gpu.samples) >= 3 and set(gpu.samples) <= {40.0, 60.0, 80.0}
    assert gpu.mean == round(sum(gpu.samples) / len(gpu.samples), 1)
    assert gpu.figures("gpu_util_loader") == {"gpu_util_loader_pct": gpu.mean, "gpu_util_loader_error": None}


def test_sampler_drops_the_windows_first_samples(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = fake_nvml(monkeypatch)
    gpu = sample(seconds=0.3, skip_s=0.2)
    assert seen["reads"] > len(gpu.samples) > 0  # read all along, kept after 0.2 s


def test_sampler_reports_why_it_has_no_figure(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake_nvml(monkeypatch, fail=True)
    gpu = sample(seconds=0.2)
    assert gpu.mean is None and gpu.error == "RuntimeError: NVML_ERROR_GPU_IS_LOST"

    fake_nvml(monkeypatch)
    gpu = sample(seconds=0.1, skip_s=5)  # a window shorter than the dropped start
    assert gpu.mean is None and gpu.error == "no sample after the first 5 s"

    monkeypatch.setitem(sys.modules, "pynvml", None)
    monkeypatch.setenv("PATH", str(tmp_path))  # neither NVML nor nvidia-smi
    gpu = sample(seconds=0.1)
    assert gpu.mean is None and "no nvidia-smi on PATH" in gpu.error and "NVML" in gpu.error

    on_cpu = CHECK.GpuSampler(False)
    with on_cpu:
        pass
    assert on_cpu.mean is None and on_cpu.error is None  # on CPU no figure is expected


def test_sampler_falls_back_to_nvidia_smi(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    args = fake_nvidia_smi(monkeypatch, tmp_path, "echo 73")
    gpu = sample(seconds=0.5)
    assert gpu.error is None and gpu.samples and set(gpu.samples) == {73.0}
    assert args.read_text().splitlines()[0].startswith(f"-i {UUID} --query-gpu=utilization.gpu")


def test_sampler_records_a_failing_nvidia_smi(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake_nvidia_smi(monkeypatch, tmp_path, "echo 'No devices were found' >&2; exit 6")
    gpu = sample(seconds=0.3)
    assert gpu.mean is None and gpu.error == "RuntimeError: nvidia-smi exit 6: No devices were found"


def test_nvml_uuid() -> None:
    assert CHECK.nvml_uuid("6a3b0c1d-0000") == "GPU-6a3b0c1d-0000"
    assert CHECK.nvml_uuid(UUID) == UUID and CHECK.nvml_uuid("MIG-1") == "MIG-1"


def plan(**kw: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "budget_s": 480,
        "batch": 256,
        "batches": 36,
        "max_pairs": 60000,
        "bytes_per_pair": 100_000,
        "free_bytes": 50 * 2**30,
    }
    return CHECK.plan_pairs([(1000, 12.0), (3000, 28.0)], 50.0, **(args | kw))


def test_plan_pairs_arithmetic() -> None:
    p = plan()
    assert p["per_pair_s"] == pytest.approx(0.008) and p["fixed_s"] == 4.0  # 12 = 4 + 1000 x 0.008
    assert p["share_s"] == 120.0 and p["left_after_calibration_s"] == 70.0
    assert p["pairs_by_budget"] == 8250  # (70 - 4) / 0.008
    assert p["floor_pairs"] == 21943  # ceil(256 x 36 / 0.42): the floor wins over the budget
    assert p["pairs_by_disk"] == int(0.7 * 50 * 2**30 / 100_000)
    assert p["pairs"] == 21943 and p["warnings"] == []
    assert p["predicted_s"] == round(4 + 21943 * 0.008, 1)


def test_plan_pairs_caps_and_warnings() -> None:
    assert plan(batch=32, batches=7)["pairs"] == 8250  # a small floor: the budget decides
    assert plan(budget_s=100_000)["pairs"] == 60000  # max_pairs caps the budget
    small_disk = plan(free_bytes=10**9)  # 0.7 GB / 100 kB = 7,000 pairs
    assert small_disk["pairs_by_disk"] == 7000 and small_disk["pairs"] == 7000
    assert small_disk["warnings"] == [
        "the floor 21,943 is over the disk cap 7,000: fewer batches than the training steps, epochs repeat"
    ]
    over = plan(max_pairs=5000)
    assert over["pairs"] == 5000 and over["warnings"][0].startswith("the floor 21,943 is over max_pairs 5,000")
    noisy = CHECK.plan_pairs(
        [(1000, 20.0), (3000, 18.0)],  # the larger run was faster: no fixed part, seconds / pairs
        0.0,
        budget_s=480,
        batch=1,
        batches=1,
        max_pairs=10**6,
        bytes_per_pair=0,  # unmeasured: no disk cap
        free_bytes=0,
    )
    assert noisy["per_pair_s"] == 0.006 and noisy["fixed_s"] == 14.0 and noisy["pairs_by_disk"] == 10**6


def test_window_steps() -> None:
    assert CHECK.window_steps(3000.0, 256, 10.0, 48.0, 30) == 118  # ceil(10 s x 3000 / 256)
    assert CHECK.window_steps(300.0, 256, 10.0, 48.0, 30) == 30  # at least the profile's steps
    assert CHECK.window_steps(30000.0, 256, 10.0, 2.0, 30) == 234  # at most what lasts max_window_s
    assert CHECK.window_steps(100.0, 256, 10.0, 2.0, 30) == 30  # the minimum wins over the cap


def test_full_batch_skips_a_short_last_batch() -> None:
    stream = iter([{"patch_id": [1] * 32}, {"patch_id": [1] * 5}, {"patch_id": [2] * 32}])
    next(stream)
    assert CHECK.full_batch(stream, 32)["patch_id"] == [2] * 32
    with pytest.raises(RuntimeError, match="no batch of 32 pairs in 3 batches"):
        CHECK.full_batch(iter([{"patch_id": [1]}] * 5), 32, tries=3)


def test_partial_figures_merge(tmp_path: Path) -> None:
    path = tmp_path / "train_partial.jsonl"
    assert CHECK.read_partial(path) == {}
    CHECK.append_partial(str(path), {"device": "cuda:0"})
    CHECK.append_partial(str(path), {"bf16": {"loader_pairs_per_s": 9000.0}})
    with open(path, "a") as f:
        f.write('{"fp32": {"loader_pa')  # a worker killed mid-line
    assert CHECK.read_partial(path) == {"device": "cuda:0", "bf16": {"loader_pairs_per_s": 9000.0}}


def test_tar_logs_is_capped(tmp_path: Path) -> None:
    import os

    logs = tmp_path / "session" / "logs"
    logs.mkdir(parents=True)
    for i in range(8):
        (logs / f"worker-{i}.out").write_bytes(os.urandom(40_000))  # incompressible
    (logs / "raylet.out").write_text("raylet started\n")
    assert CHECK.tar_logs(tmp_path / "missing", tmp_path / "none.tar.gz") is None
    small = CHECK.tar_logs(logs.parent, tmp_path / "all.tar.gz")
    with tarfile.open(small) as tar:
        assert len(tar.getnames()) == 9 and "logs/raylet.out" in tar.getnames()
    capped = CHECK.tar_logs(logs.parent, tmp_path / "capped.tar.gz", cap=100_000)
    with tarfile.open(capped) as tar:
        sizes = [m.size for m in tar.getmembers()]
    assert capped.stat().st_size <= 100_000 + 40_000 and 0 < len(sizes) < 9  # stopped near the cap
    assert max(sizes) == 25_000  # a file over a quarter of the cap: its last quarter


def test_steps_to_run_from_a_step() -> None:
    assert CHECK.steps_to_run("probe") == list(CHECK.STEPS)
    assert CHECK.steps_to_run("evaluate") == ["probe", "evaluate", "index", "serve"]


def test_preflight_runs_every_part_on_cpu() -> None:
    doc = PREFLIGHT.run("cpu")
    assert doc["failed"] == [] and list(doc["parts"]) == ["flips", "stem", "resnet50", "pinned"]
    assert all(p["ok"] and p["seconds"] >= 0 for p in doc["parts"].values())
    assert doc["parts"]["stem"]["shape"] == [4, 14, 120, 120] and doc["parts"]["resnet50"]["pairs_per_s"] > 0


def test_carried_check_keeps_the_conflicts_of_carried_packages(tmp_path: Path) -> None:
    for name in ("ray-2.60.0-cp312-cp312-manylinux2014_x86_64.whl", "pydantic_core-2.50.5-cp312-none-any.whl"):
        (tmp_path / name).touch()
    carried = CARRIED.wheel_names(tmp_path)
    assert carried == {"ray", "pydantic-core"}
    lines = [
        "ray 2.60.0 has requirement aiohttp>=3.14.4, but you have aiohttp 3.9.1.",
        "pydantic 2.14.4 has requirement Pydantic_Core==2.50.5, but you have pydantic-core 2.27.0.",
        "tensorboard 2.15 requires markdown, which is not installed.",
        "ray 2.60.0 requires msgpack, which is not installed.",
    ]
    assert CARRIED.conflicts(lines, carried) == [lines[0], lines[1], lines[3]]


def device_commands() -> list[str]:
    """The recipe's device commands: the fenced blocks marked `sh device-call` in docs/benchmarks.md."""
    text = (REPO / "docs" / "benchmarks.md").read_text()
    return re.findall(r"```sh device-call\n(.*?)```", text, flags=re.S)


def test_the_recipes_device_commands_fit_the_device_tool() -> None:
    commands = device_commands()
    assert len(commands) == 4  # the three calls and the rerun from a step
    for command in commands:
        assert len(command.strip()) <= 2000, (len(command.strip()), command[:80])
    assert "sha256sum -c" in commands[2] and "carried_check.py" in commands[2] and "--label" in commands[2]
    assert "gpu_preflight.py" in commands[0] and "--from" in commands[3]
