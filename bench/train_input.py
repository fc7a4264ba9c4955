"""Benchmark: the two training inputs side by side (`data.pipeline: worker | ray_data`, issue 25), the consumer a Ray
Train worker that only counts its batches, on local Ray clusters started for the purpose.

    .venv/bin/python bench/train_input.py [--pairs 4000] [--epochs 4] [--out bench/results/train_input.json]

Two clusters, one after the other, each its own `ray start` nodes (own short temp dir, own ports):
  single  one node on every core of this machine, 3 logical CPUs: the Train worker reserves 1 (it only counts),
          Ray Data's tasks the other 2; the worker path reads with `--reader-threads` threads in the worker.
  hetero  a simulated heterogeneous cluster: the "training node" (the head; custom resource `trainer`, 1 CPU) is
          pinned to core 0 with taskset, and one CPU-only node (1 CPU, no `trainer`) to core 1. The Train worker
          asks for `trainer`, so it runs on the training node; its CPU is the node's only one, so Ray Data's tasks
          (CPU only) run on the CPU-only node. The worker path can only use core 0.
  hetero-head-apart  the same two nodes, the head (GCS, the driver) on the CPU-only one.
Per path and epoch: the pairs over the epoch's wall time (the headline: Ray Data's tasks run ahead while the
consumer waits, so the rate after the first batch flatters it), the wait for the first batch (epoch start; the first
epoch's is cold) and the rate after it; the CPU time of the Train worker process per pair, and (hetero) how busy
the training node's core was. The figures are over the epochs after the first. Prints the JSON (also written to
--out) and a Markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from procs import descendants, free_ports, kill_until_gone, process_table, ray_port_flags, ray_start_env  # noqa: E402

RAY = str(Path(sys.executable).with_name("ray"))


class Nodes:
    """Local Ray nodes: a head and CPU-only nodes, each `ray start`ed under `taskset -c <cores>` (its processes
    inherit the pinning), with its own temp dir and ports; stopped by killing only their processes."""

    def __init__(self, nodes: list[dict[str, Any]]) -> None:
        self.nodes = nodes  # {"cores": "0", "cpus": 1, "resources": {...}}
        self.tmp = tempfile.mkdtemp(prefix="ti", dir="/tmp")  # short: Ray's socket paths have a length limit
        self.env = ray_start_env()
        self.port = free_ports(1)[0]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> Nodes:
        for i, node in enumerate(self.nodes):
            *ports, client = free_ports(7)
            lo = 20000 + 600 * i + 400 * (os.getpid() % 10)  # worker port ranges apart from each other's
            args = [
                "taskset",
                "-c",
                node["cores"],
                RAY,
                "start",
                *(["--head", f"--port={self.port}", f"--ray-client-server-port={client}"] if i == 0 else []),
                *([f"--address={self.address}"] if i else []),
                "--node-ip-address=127.0.0.1",
                f"--temp-dir={self.tmp}/n{i}",
                f"--num-cpus={node['cpus']}",
                f"--resources={json.dumps(node.get('resources', {}))}",
                *(["--include-dashboard=false"] if i == 0 else []),
                "--disable-usage-stats",
                *ray_port_flags(ports),
                f"--min-worker-port={lo}",
                f"--max-worker-port={lo + 399}",
            ]
            done = subprocess.run(args, env=self.env, capture_output=True, text=True, timeout=180)
            if done.returncode:
                self.stop()
                raise RuntimeError(f"ray start failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
        return self

    def pids(self, table: dict[int, tuple[int, bytes]]) -> set[int]:
        port = re.compile(rb":%d(?!\d)" % self.port)
        mine = [p for p, (_, cmd) in table.items() if self.tmp.encode() in cmd or port.search(cmd)]
        return set(descendants(mine, table))

    def stop(self) -> None:
        kill_until_gone(lambda: self.pids(process_table()))
        shutil.rmtree(self.tmp, ignore_errors=True)


def core_busy(core: int | None) -> float:
    """Seconds core `core` has been busy since boot (/proc/stat: user, nice, system, irq, softirq, steal); 0 for
    None."""
    if core is None:
        return 0.0
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{core} "):
            f = [int(x) for x in line.split()[1:]]
            return (f[0] + f[1] + f[2] + f[5] + f[6] + f[7]) / os.sysconf("SC_CLK_TCK")
    return 0.0


def run_path(
    shards: str, pipeline: str, a: argparse.Namespace, out: Path, core: int | None = None
) -> list[dict[str, Any]]:
    """One Ray Train run of one worker on the `trainer` node counting `a.epochs` epochs of batches: per epoch its
    first-batch wait, steady pairs/s, steps."""
    import ray.train
    from ray.train.torch import TorchTrainer

    from bigearth.input.loader import open_row_groups
    from bigearth.input.raybatches import open_batches

    def loop(config: dict[str, Any]) -> None:  # pickled by value into the worker
        from bigearth.input.buffers import BatchBuffers
        from bigearth.input.loader import RowGroupLoader, epoch_share, plan_of
        from bigearth.input.raybatches import shard_batches

        ctx = ray.train.get_context()
        rank, world = ctx.get_world_rank(), ctx.get_world_size()
        ray_data = config["pipeline"] == "ray_data"
        source = ray.train.get_dataset_shard("train_batches" if ray_data else "train")
        plan = None if ray_data else plan_of(source)
        buffers = BatchBuffers()  # one for every epoch's loader, as training does
        epochs = []
        for epoch in range(config["epochs"]):
            cpu0, busy0 = time.process_time(), core_busy(config["core"])
            start = time.perf_counter()
            if ray_data:
                batches: Any = shard_batches(source)
            else:
                share, limit = epoch_share(plan, epoch, 0, rank, world)  # type: ignore[arg-type]
                batches = RowGroupLoader(
                    share,
                    config["batch"],
                    shuffle_buffer=config["shuffle"],
                    seed=[0, rank, epoch],
                    limit=limit,
                    buffers=buffers,
                    threads=config["threads"],
                )
            first, pairs, total, steps, t_first = None, 0, 0, 0, start
            for batch in batches:
                steps += 1
                total += len(batch["patch_id"])
                if first is None:
                    t_first = time.perf_counter()
                    first = t_first - start
                else:
                    pairs += len(batch["patch_id"])
            end = time.perf_counter()
            cpu, busy = time.process_time() - cpu0, core_busy(config["core"]) - busy0
            epochs.append(
                {
                    "epoch": epoch,
                    "first_batch_s": round(first or 0.0, 3),
                    "steady_pairs_per_s": round(pairs / max(end - t_first, 1e-9), 1),
                    "epoch_pairs_per_s": round(total / max(end - start, 1e-9), 1),
                    "pairs": total,
                    # CPU the Train worker process spent per pair (reading and collating, or receiving)
                    "worker_cpu_us_per_pair": round(cpu / max(total, 1) * 1e6, 1),
                    # the training node's core, all its processes (raylet, object transfers) and any other load
                    "trainer_core_busy": (
                        round(busy / max(end - start, 1e-9), 2) if config["core"] is not None else None
                    ),
                    "trainer_core_us_per_pair": round(busy / max(total, 1) * 1e6, 1),
                    "steps": steps,
                    "seconds": round(end - start, 2),
                    "node": ray.get_runtime_context().get_node_id(),
                }
            )
        if rank == 0:
            Path(config["out"]).write_text(json.dumps(epochs))

    datasets = {"train": open_row_groups(shards, "train")}
    split: list[str] = []
    if pipeline == "ray_data":
        datasets["train_batches"] = open_batches(shards, "train", batch_size=a.batch, shuffle_buffer=a.shuffle, seed=0)
        split = ["train_batches"]
    TorchTrainer(
        loop,
        train_loop_config={
            "pipeline": pipeline,
            "epochs": a.epochs,
            "batch": a.batch,
            "shuffle": a.shuffle,
            "threads": a.reader_threads,
            "out": str(out),
            "core": core,
        },
        scaling_config=ray.train.ScalingConfig(num_workers=1, resources_per_worker={"CPU": 1, "trainer": 1}),
        run_config=ray.train.RunConfig(storage_path=str(out.parent / "runs"), name=f"{pipeline}-{out.stem}"),
        datasets=datasets,
        dataset_config=ray.train.DataConfig(datasets_to_split=split),
    ).fit()
    return json.loads(out.read_text())  # type: ignore[no-any-return]


def summary(epochs: list[dict[str, Any]]) -> dict[str, Any]:
    later = epochs[1:] or epochs
    return {
        "epoch_pairs_per_s": round(sum(e["pairs"] for e in later) / sum(e["seconds"] for e in later), 1),
        "steady_pairs_per_s": round(sum(e["steady_pairs_per_s"] for e in later) / len(later), 1),
        "epoch_start_s": round(sum(e["first_batch_s"] for e in later) / len(later), 3),
        "cold_first_batch_s": epochs[0]["first_batch_s"],
        "worker_cpu_us_per_pair": round(sum(e["worker_cpu_us_per_pair"] for e in later) / len(later), 1),
        "trainer_core_us_per_pair": round(sum(e["trainer_core_us_per_pair"] for e in later) / len(later), 1),
        "trainer_core_busy": (
            round(sum(e["trainer_core_busy"] for e in later) / len(later), 2)
            if later[0]["trainer_core_busy"] is not None
            else None
        ),
        "steps_per_epoch": [e["steps"] for e in epochs],
        "epochs": epochs,
    }


SCENARIOS: dict[str, dict[str, Any]] = {
    "single": {
        "nodes": [{"cores": "0,1", "cpus": 3, "resources": {"trainer": 1}}],
        "cores": {"worker": 2, "ray_data": 2},
        "about": "one node, both cores (3 logical CPUs: the counting Train worker 1, Ray Data tasks 2)",
    },
    "hetero": {
        "nodes": [
            {"cores": "0", "cpus": 1, "resources": {"trainer": 1}},
            {"cores": "1", "cpus": 1},
        ],
        "cores": {"worker": 1, "ray_data": 2},
        "core": 0,
        "about": "training node pinned to core 0 (1 CPU, the Train worker's) + a CPU-only node pinned to core 1",
    },
    "hetero-head-apart": {
        "nodes": [
            {"cores": "1", "cpus": 1},
            {"cores": "0", "cpus": 1, "resources": {"trainer": 1}},
        ],
        "cores": {"worker": 1, "ray_data": 2},
        "core": 0,
        "about": "as hetero, but the head (GCS, the driver's node) is the CPU-only node: the training node runs only "
        "its raylet, object manager and the Train worker",
    },
}


def table(result: dict[str, Any]) -> str:
    lines = [
        "| cluster | path | pairs/s at the trainer, whole epochs | steady pairs/s after the first batch "
        "| cores that can work | pairs/s per core | epoch start s | cold first batch s | Train worker CPU us/pair "
        "| training core busy, us/pair | steps per epoch |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for name, sc in result["scenarios"].items():
        for path in ("worker", "ray_data"):
            r = sc[path]
            busy = (
                f"{r['trainer_core_busy']:.2f}, {r['trainer_core_us_per_pair']:,.0f}"
                if r["trainer_core_busy"] is not None
                else "-"
            )
            lines.append(
                f"| {name} | {path} | {r['epoch_pairs_per_s']:,.0f} | {r['steady_pairs_per_s']:,.0f} | {r['cores']} "
                f"| {r['pairs_per_s_per_core']:,.0f} | {r['epoch_start_s']:.2f} | {r['cold_first_batch_s']:.2f} "
                f"| {r['worker_cpu_us_per_pair']:,.0f} | {busy} | {r['steps_per_epoch']} |"
            )
        lines.append(f"| {name} | ray_data / worker | x{sc['ratio_ray_data_to_worker']:.2f} | | | | | | | | |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=int, default=4000)
    p.add_argument("--epochs", type=int, default=4, help="the first is cold; the others are averaged")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--shuffle", type=int, default=1024, help="data.local_shuffle_buffer")
    p.add_argument("--reader-threads", type=int, default=2, help="the worker path's data.reader_threads")
    p.add_argument("--scenarios", default="single,hetero,hetero-head-apart")
    p.add_argument("--workdir", default=str(REPO / ".bench"))
    p.add_argument("--out", help="write the JSON here too")
    a = p.parse_args()

    import ray

    from bigearth.execution.executors import LocalExecutor
    from bigearth.ingest.job import ingest
    from bigearth.shards.shardset import ShardSet
    from bigearth.synth.archive import synthesize

    work = Path(a.workdir)
    archive, shards = work / f"archive-{a.pairs}", work / f"shards-train-input-{a.pairs}"
    if not (archive / "metadata.parquet").exists():
        synthesize(str(archive), layout="v2", pairs=a.pairs, seed=0)
    if not (shards / "manifest.json").exists():
        ingest(str(archive), str(shards), overwrite=True, executor=LocalExecutor(progress=False))
    train_pairs = ShardSet.open(str(shards)).splits["train"]
    result: dict[str, Any] = {
        "command": "python bench/train_input.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "train_pairs": train_pairs,
        "batch_size": a.batch,
        "local_shuffle_buffer": a.shuffle,
        "reader_threads": a.reader_threads,
        "epochs": a.epochs,
        "scenarios": {},
    }
    scratch = Path(tempfile.mkdtemp(prefix="train-input-"))
    try:
        for name in a.scenarios.split(","):
            sc = SCENARIOS[name]
            nodes = Nodes(sc["nodes"]).start()
            try:
                ray.init(address=nodes.address, log_to_driver=False)
                out: dict[str, Any] = {"about": sc["about"], "nodes": sc["nodes"]}
                for path in ("worker", "ray_data"):
                    s = summary(run_path(str(shards), path, a, scratch / f"{name}-{path}.json", sc.get("core")))
                    s["cores"] = sc["cores"][path]
                    s["pairs_per_s_per_core"] = round(s["epoch_pairs_per_s"] / s["cores"], 1)
                    out[path] = s
                    print(name, path, {k: v for k, v in s.items() if k != "epochs"}, flush=True)
                out["ratio_ray_data_to_worker"] = round(
                    out["ray_data"]["epoch_pairs_per_s"] / max(out["worker"]["epoch_pairs_per_s"], 1e-9), 2
                )
                result["scenarios"][name] = out
            finally:
                ray.shutdown()
                nodes.stop()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    text = json.dumps(result, indent=2)
    print(text)
    print(table(result))
    if a.out:
        Path(a.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
