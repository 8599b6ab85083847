#!/usr/bin/env bash
# The real-GPU benchmark (issue 13): `easel bench train --backend gpu --json` at batch 64 and
# 256 beside PyTorch CUDA eager on the same machine, printed as ONE JSON document on stdout
# (everything else goes to stderr). Meant for a lent machine with an NVIDIA GPU, no Rust
# toolchain needed, and no internet beyond package registries (apt, pip).
#
#   bench/gpu/run.sh            # from the repository root or anywhere
#
# Needs: target/release/easel (build it elsewhere with `cargo build --release -p easel
# --bin easel` and carry it; built here when cargo exists and the binary does not) and
# data/mnist.bin (`cargo xtask data`; carried too). Environment: EASEL (the binary),
# BENCH_SECONDS (timed seconds per run, default 8), BATCHES (default "64,256"), PYTHON (one
# that already has CUDA torch, to skip the install), TORCH_INDEX (a pip index URL for torch,
# default PyPI's, whose Linux wheels carry CUDA).
set -euo pipefail
cd "$(dirname "$0")/../.."
EASEL=${EASEL:-target/release/easel}
SECS=${BENCH_SECONDS:-8}
BATCHES=${BATCHES:-64,256}
WORK=${TMPDIR:-/tmp}/easel-gpu-bench
mkdir -p "$WORK"
log() { echo "run.sh: $*" >&2; }
apt_install() {
    command -v apt-get >/dev/null || { log "no apt-get to install $*"; return 1; }
    local sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    $sudo apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >&2
}

# 1. The Vulkan loader, and NVIDIA's Vulkan driver made visible to it. Containers often get
#    the driver's libraries (libGLX_nvidia.so.0 holds its Vulkan entry points) without the
#    ICD manifest that tells the loader about them; then we write one.
ldconfig -p | grep -q 'libvulkan.so.1' || apt_install libvulkan1
if ! ls /usr/share/vulkan/icd.d/nvidia_icd*.json /etc/vulkan/icd.d/nvidia_icd*.json >/dev/null 2>&1; then
    if ldconfig -p | grep -q 'libGLX_nvidia.so.0'; then
        cat >"$WORK/nvidia_icd.json" <<'JSON'
{"file_format_version": "1.0.0", "ICD": {"library_path": "libGLX_nvidia.so.0", "api_version": "1.3.0"}}
JSON
        export VK_ICD_FILENAMES="$WORK/nvidia_icd.json"
        log "no NVIDIA Vulkan ICD manifest; wrote $VK_ICD_FILENAMES"
    else
        log "no NVIDIA Vulkan driver found (libGLX_nvidia.so.0): wgpu may pick a software adapter; see \"adapter\" below"
    fi
fi

# 2. The easel binary and the data.
if [ ! -x "$EASEL" ]; then
    command -v cargo >/dev/null || { log "$EASEL is missing and there is no cargo to build it: carry a release build"; exit 1; }
    log "building $EASEL"
    cargo build --release -p easel --bin easel >&2
fi
[ -f data/mnist.bin ] || { log "data/mnist.bin is missing: run \`cargo xtask data\` and carry it"; exit 1; }

# 3. PyTorch with CUDA, in a virtual environment (never in the project's dependencies).
has_cuda_torch() { "$1" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; }
PY=${PYTHON:-}
if [ -z "$PY" ] || ! has_cuda_torch "$PY"; then
    PY="$WORK/venv/bin/python"
    if ! has_cuda_torch "$PY"; then
        python3 -m venv "$WORK/venv" >&2 2>&1 || { apt_install python3-venv && python3 -m venv "$WORK/venv" >&2; }
        log "installing torch (CUDA wheels) into $WORK/venv"
        "$WORK/venv/bin/pip" install -q --upgrade pip >&2
        "$WORK/venv/bin/pip" install -q ${TORCH_INDEX:+--index-url "$TORCH_INDEX"} torch >&2
        "$WORK/venv/bin/pip" install -q numpy >&2
        has_cuda_torch "$PY" || { log "torch installed but sees no CUDA device"; exit 1; }
    fi
fi

# 4. The runs, Easel first, then PyTorch, each batch in turn.
: >"$WORK/easel.jsonl"
for b in ${BATCHES//,/ }; do
    log "easel bench train --backend gpu --batch $b --seconds $SECS"
    "$EASEL" bench train --backend gpu --batch "$b" --seconds "$SECS" --json | tail -n 1 >>"$WORK/easel.jsonl"
done
log "PyTorch CUDA eager, batches $BATCHES"
"$PY" bench/gpu/torch_cuda_peer.py --batches "$BATCHES" --seconds "$SECS" | tail -n 1 >"$WORK/torch.json"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >"$WORK/gpu.txt" 2>/dev/null || echo unknown >"$WORK/gpu.txt"

# 5. One JSON document: machine, both engines per batch, and Easel over PyTorch.
python3 - "$WORK" <<'PY'
import json, platform, subprocess, sys, time
from pathlib import Path
w = Path(sys.argv[1])
easel = [json.loads(l) for l in (w / "easel.jsonl").read_text().splitlines() if l.strip()]
torch = json.loads((w / "torch.json").read_text())
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "unknown")
by_batch = {r["batch"]: r for r in torch["runs"]}
rows = []
for e in easel:
    t = by_batch.get(e["batch"])
    rows.append({
        "batch": e["batch"],
        "easel_samples_per_sec": round(e["samples_per_sec"], 1),
        "easel_gflops": round(e["gflops"], 3),
        "easel_dispatches_per_step": e.get("dispatches_per_step"),
        "easel_readbacks_per_step": e.get("readbacks_per_step"),
        "pytorch_cuda_samples_per_sec": t and t["samples_per_sec"],
        "easel_over_pytorch": t and round(e["samples_per_sec"] / t["samples_per_sec"], 3),
    })
print(json.dumps({
    "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    "gpu": (w / "gpu.txt").read_text().strip(),
    "cpu": cpu,
    "kernel": platform.release(),
    "easel_adapter": easel[0]["adapter"] if easel else None,
    "torch": {k: torch[k] for k in ("torch_version", "cuda_version", "device", "mode")},
    "results": rows,
    "easel_raw": easel,
    "torch_raw": torch["runs"],
}, indent=1))
PY
