#!/usr/bin/env bash
# Run HERE (not on the GPU host) before a device run: fills the git-ignored .carry/
# with what the GPU host lacks (Python 3.12 wheels of grain, array_record,
# ml_collections, portpicker; timm 1.0.31, the version the PyTorch sides were written
# against, over the host's own) and, if ../shared/data is present, JPEGs with CSV
# manifests for the input-pipeline and end-to-end benchmarks, under .carry/data/ in
# the shared layout: 20 CUB-100 crops per class (2,000 files; all 5,902 would not fit
# the 64 MiB carry limit next to the rest) and the full-size CUB-200 official sample.
# Then call the device tool with carry=[".carry"] and command `bash benchmarks/run_gpu.sh`.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .carry/whl
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .carry/whl \
  grain==0.2.18 array_record ml_collections portpicker timm==1.0.31
shared=../shared/data
# <name>/images/<class>/*.jpg, at most $2 files per class, and <name>/manifest.csv
# (path,label; paths relative to the CSV's folder, labels by sorted class folder).
copy_images() {
  local name=$1 per_class=$2 src=$shared/$1/images dst=.carry/data/$1
  [ -d "$src" ] || return 0
  rm -rf "$dst" && mkdir -p "$dst/images"
  for class_dir in "$src"/*/; do
    class=$(basename "$class_dir") && mkdir -p "$dst/images/$class"
    mapfile -t files < <(find "$class_dir" -maxdepth 1 -name '*.jpg' | sort)
    [ ${#files[@]} -eq 0 ] || cp -t "$dst/images/$class" "${files[@]:0:per_class}"
  done
  (cd "$dst" && find images -name '*.jpg' | sort | awk -F/ 'BEGIN{print "path,label"}
     {if (!($(NF-1) in id)) id[$(NF-1)]=n++; print $0 "," id[$(NF-1)]}' > manifest.csv)
}
copy_images cub100_crops227 20
copy_images cub200_official_sample/CUB_200_2011 1000000
du -sh .carry
