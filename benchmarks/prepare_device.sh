#!/usr/bin/env bash
# Run HERE (not on the GPU host) before a device run: fills the git-ignored .carry/
# with what the GPU host lacks (Python 3.12 wheels of grain, array_record,
# ml_collections, portpicker) and, if ../shared/data is present, the CUB-100 crops
# with a CSV manifest for the end-to-end JPEG benchmark. Then call the device tool with
# carry=[".carry"] and command `bash benchmarks/run_gpu.sh`.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .carry/whl
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .carry/whl \
  grain==0.2.18 array_record ml_collections portpicker
crops=../shared/data/cub100_crops227
if [ -d "$crops" ]; then
  rm -rf .carry/cub && mkdir -p .carry/cub && cp -r "$crops/images" .carry/cub/
  (cd .carry/cub && find images -name '*.jpg' | sort | awk -F/ 'BEGIN{print "path,label"}
     {if (!($2 in id)) id[$2]=n++; print $0 "," id[$2]}' > manifest.csv)
fi
du -sh .carry
