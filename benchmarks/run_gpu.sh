#!/usr/bin/env bash
# Run ON the GPU host (device tool: carry=[".carry"], command `bash benchmarks/run_gpu.sh`).
# Writes every result to $OUT (or ./bench_out) as JSON plus a log.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-bench_out}; mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
if [ -d .carry/whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .carry/whl/*.whl && export PYTHONPATH=$PWD:/tmp/site
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"
python3 -c "import jax, torch, torchvision; print('jax', jax.__version__, 'torch', torch.__version__, 'torchvision', torchvision.__version__)" | tee -a "$out/gpu.txt"
jpeg=""; [ -f .carry/cub/manifest.csv ] && jpeg="--jpeg-csv .carry/cub/manifest.csv --workers 16"
python3 benchmarks/train_step.py --which supervised,moco,byol $jpeg --out "$out/jax.json" 2>&1 | tee "$out/jax.log"
python3 benchmarks/torch_train_step.py --which supervised,moco,byol --modes eager,compile --out "$out/torch.json" 2>&1 | tee "$out/torch.log"
python3 benchmarks/weights_parity.py 2>&1 | tee "$out/parity.log"
