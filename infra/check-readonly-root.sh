#!/usr/bin/env bash
# Does Ray (core tasks, the object store, torch, matplotlib, Serve, `ray job submit`) run with the root file system
# read-only and only the pods' emptyDir paths writable (/tmp, which holds /tmp/ray, and $HOME/.cache)? Runs the
# checks in a private mount namespace as root (Linux):
#   sudo unshare -m infra/check-readonly-root.sh [PYTHON_BIN_DIR]     # default: .venv/bin of this checkout
# Exit status 0 and "ok" when all pass. It starts a local Ray cluster (a minute of CPU).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
B=${1:-$REPO/.venv/bin}
mount --make-rprivate /
mount --bind / / && mount -o remount,bind,ro /
mkdir -p "$HOME/.cache" 2>/dev/null || true
mount -t tmpfs tmpfs /tmp && mount -t tmpfs tmpfs "$HOME/.cache"
if touch "$REPO/.rw-probe" 2>/dev/null; then echo "the root file system is still writable" >&2; exit 2; fi
export XDG_CACHE_HOME=$HOME/.cache TORCH_HOME=$HOME/.cache/torch MPLCONFIGDIR=$HOME/.cache/matplotlib
export PYTHONPATH=$REPO/platform RAY_ENABLE_UV_RUN_RUNTIME_ENV=0 RAY_AUTH_MODE=disabled
cd "$REPO"
trap '"$B/ray" stop >/dev/null 2>&1 || true' EXIT
"$B/ray" start --head --num-cpus 2 --disable-usage-stats --dashboard-host 127.0.0.1 >/dev/null
"$B/python" - <<'PY'
import io
import urllib.request

import ray
from ray import serve

ray.init(address="auto")


@ray.remote
def work():
    import matplotlib
    import torch

    import bigearth  # noqa: F401

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.plot([1, 2])
    buf = io.BytesIO()
    plt.savefig(buf, format="png")
    ref = ray.put(b"x" * 10_000_000)
    return float((torch.ones(100, 100) @ torch.ones(100, 100))[0, 0]), len(buf.getvalue()) > 0, len(ray.get(ref))


assert ray.get(work.remote()) == (100.0, True, 10_000_000)


@serve.deployment
class Hello:
    def __call__(self, request):
        return "hello"


serve.start(http_options={"host": "127.0.0.1", "port": 8000})
serve.run(Hello.bind(), route_prefix="/")
assert urllib.request.urlopen("http://127.0.0.1:8000/").read() == b"hello"
serve.shutdown()
PY
"$B/ray" job submit --address http://127.0.0.1:8265 -- "$B/python" -c "import bigearth, ray; ray.init()" >/dev/null
if grep -rqi "read-only file system" /tmp/ray/session_latest/logs; then
    grep -rhi "read-only file system" /tmp/ray/session_latest/logs | sort | uniq -c | head >&2
    exit 1
fi
echo ok
