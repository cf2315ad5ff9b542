#!/usr/bin/env bash
# Run ON the GPU host (device tool: carry=[".carry"], command `bash benchmarks/run_gpu.sh`,
# or `bash benchmarks/run_gpu.sh input e2e` for some parts only; see prepare_device.sh).
# Parts: steps (fgjax train steps incl. LCR and BuCSFR, + each fed from the CUB crops),
# torch (PyTorch reference steps), parity (weight import), input (input pipeline against
# torchvision, one worker per core), e2e (MoCo v2 fed from full-size JPEGs vs synthetic),
# herbs (Swin-L/384 + HERBS step at micro-batch 8, fgjax vs the PyTorch original; at most
# 3 minutes), and, only when named, herbsmax (the largest micro-batch, remat off/on, both
# frameworks; at most 9 minutes: `bash benchmarks/run_gpu.sh herbsmax`), describe (CFGA
# descriptors/s of ResNet-50 at 224, fgjax batch 32 vs the PyTorch per-image procedure;
# about 1 minute, at most 3), buc (BuCSFR's per-epoch BuC step, CIFAR-100 and Cars sizes,
# against scikit-learn's k-means on the host CPUs; about 2 minutes, at most 5).
# Writes every result to $OUT (or ./bench_out) as JSON plus a log.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-bench_out}; mkdir -p "$out"
parts=" ${*:-steps torch parity input e2e herbs describe buc} "
want() { [[ $parts == *" $1 "* ]]; }
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
if [ -d .carry/whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .carry/whl/*.whl && export PYTHONPATH=$PWD:/tmp/site
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"
python3 -c "import jax, torch, torchvision; print('jax', jax.__version__, 'torch', torch.__version__, 'torchvision', torchvision.__version__)" | tee -a "$out/gpu.txt"
data=.carry/data crops=.carry/data/cub100_crops227/manifest.csv
full=.carry/data/cub200_official_sample/CUB_200_2011/manifest.csv
workers=$(nproc)
jpeg=""; [ -f $crops ] && jpeg="--jpeg-csv $crops --workers $workers"
want steps && python3 benchmarks/train_step.py --which supervised,moco,byol,lcr,bucsfr $jpeg --out "$out/jax.json" 2>&1 | tee "$out/jax.log"
want torch && python3 benchmarks/torch_train_step.py --which supervised,moco,byol --modes eager,compile --out "$out/torch.json" 2>&1 | tee "$out/torch.log"
want parity && python3 benchmarks/weights_parity.py 2>&1 | tee "$out/parity.log"
# HERBS: fgjax without remat and the recipe (a4-remat: 4 micro-batches of 8, remat) against
# the original (fp16 autocast, no checkpointing); Swin-L compilation dominates the time.
# The deadlines kill what is left (each row is written as it comes).
want herbs && python3 benchmarks/herbs_step.py --jax-runs a1,a4-remat --torch-runs a1,a4 \
  --warmup 2 --steps 8 --deadline-s 180 --out "$out/herbs.json" 2>&1 | tee "$out/herbs.log"
want herbsmax && python3 benchmarks/herbs_step.py --find-max-batch --framework torch,jax \
  --search-budget-s 240 --deadline-s 540 --out "$out/herbs_max.json" 2>&1 |
  tee "$out/herbs_max.log"
# CFGA descriptors: fgjax compiles one vmapped forward + backward (most of its time).
want describe && python3 benchmarks/describe.py --timeout-s 90 --out "$out/describe.json" 2>&1 |
  tee "$out/describe.log"
# BuC step: its share of an epoch uses the MoCo v2 images/s of the steps part when it ran
# (else an assumed 2,500 img/s); scikit-learn runs on all host cores (faiss is absent there).
if want buc; then
  rate=""; [ -f "$out/jax.json" ] && rate="--images-per-s-from $out/jax.json"
  timeout 300 python3 benchmarks/buc_step.py --preset cifar100,cars --repeats 5 $rate \
    --out "$out/buc.json" 2>&1 | tee "$out/buc.log"
fi
# One grain/DataLoader worker per core; a worker makes a whole batch, so warm up a batch
# per worker and time 10 per worker.
want input && [ -d $data ] && python3 benchmarks/input_pipeline.py --data $data --workers "$workers" \
  --warmup "$workers" --batches $((10 * workers)) --repeats 2 --out "$out/input_pipeline.md" \
  --json "$out/input_pipeline.json" 2>&1 | tee "$out/input_pipeline.log"
# The sample's 202 files listed 3 times (a batch of 256 needs 256 rows), warm-up and timed
# steps covering every worker's first batches.
if want e2e && [ -f $full ]; then
  full3=${full%.csv}_x3.csv
  { head -n 1 $full; for _ in 1 2 3; do tail -n +2 $full; done; } > "$full3"
  python3 benchmarks/train_step.py --which moco --jpeg-csv "$full3" --workers "$workers" \
    --warmup "$workers" --steps $((4 * workers)) --out "$out/e2e_full.json" 2>&1 |
    tee "$out/e2e_full.log"
fi
exit 0
