#!/usr/bin/env bash
# Download, here (where pip reaches the registry), the pure-Python wheels that scripts/gpu_check.sh installs on a GPU
# host without network. The host (November 2026) has Python 3.12.3, torch 2.11.0+cu130, transformers 5.17.0,
# accelerate 1.15.0, peft, safetensors, pyarrow and pytest, and no trl, datasets, deepspeed or vLLM. What travels to
# it is at most 64 MiB (working tree included), so every wheel is pinned and the folder must stay under 40 MiB.
#
#   bash scripts/gpu_wheels.sh            # -> .gpu_wheels/ (ignored by git; name it in the device call's carry)
#
# Each pin was chosen from the wheels' Requires-Dist (unzip -p WHEEL '*/METADATA' | grep ^Requires-Dist) against
# the host's packages: torch, accelerate, tokenizers, safetensors, huggingface-hub, numpy, pandas, pyarrow, pyyaml,
# regex, tqdm, typer, jinja2, psutil, filelock, packaging and xxhash are there and are not carried.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
DEST="${GPU_WHEELS_DIR:-.gpu_wheels}"
MAX_MIB=40

# One exact version per package (scripts/gpu_check.py reads this list; tests/test_gpu_check.py checks the pins).
WHEELS=(
  trl==1.16.0            # not on the host; pyproject: trl>=1.16.0,<1.17
  datasets==5.2.0        # not on the host (trl and trl_soup.toy need it); pyproject: datasets>=5.2,<6
  transformers==5.19.0   # the host's 5.17.0 is below pyproject's transformers>=5.19,<5.25 (5.19.0: CI's first env)
  peft==0.21.2           # the host's version is unknown and trl imports peft when present; extra: peft>=0.21,<0.22
  dill==0.4.1            # datasets: dill>=0.3.0,<0.4.2; not on the host
  multiprocess==0.70.19  # datasets: multiprocess<0.70.20; not on the host
  fsspec==2026.9.0       # datasets: fsspec>=2023.1.0,<=2026.9.0; the host's version is unknown
)

mkdir -p "$DEST"
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform any -d "$DEST" "${WHEELS[@]}"

# Keep exactly the pinned wheels: a second version of a package in the folder stops the whole install there.
keep=()
for spec in "${WHEELS[@]}"; do
  name="${spec%%==*}"
  version="${spec#*==}"
  file=$(find "$DEST" -maxdepth 1 -iname "${name//-/_}-${version}-*.whl" | head -n 1)
  if [ -z "$file" ]; then
    echo "gpu_wheels: no wheel for $spec in $DEST" >&2
    exit 1
  fi
  keep+=("$(basename "$file")")
done
for file in "$DEST"/*; do
  base=$(basename "$file")
  if [[ ! " ${keep[*]} " == *" $base "* ]]; then
    echo "gpu_wheels: removing $base (not in the pinned list)"
    rm -f -- "$file"
  fi
done

bytes=$(du -cb "$DEST"/*.whl | tail -n 1 | cut -f 1)
mib=$(python3 -c "print(f'{$bytes / 2**20:.1f}')")
echo "gpu_wheels: ${#keep[@]} wheels in $DEST, $mib MiB:"
printf '  %s\n' "${keep[@]}"
if [ "$bytes" -ge $((MAX_MIB * 1024 * 1024)) ]; then
  echo "gpu_wheels: $mib MiB is over the $MAX_MIB MiB allowed (the device call carries 64 MiB in all)" >&2
  exit 1
fi
