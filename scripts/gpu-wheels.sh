#!/usr/bin/env bash
# Wheels for the GPU machine the `device` tool lends (no package registry there; Python 3.12, torch,
# lightning, accelerate, peft and transformers 5.17 already installed): the pinned packages its image
# lacks, downloaded here into .whl/ for scripts/gpu-check.sh, which installs them into /tmp/site.
#
#   bash scripts/gpu-wheels.sh                       # ~53 MB: fits the 64 MiB a device call carries
#   WITH_TRANSFORMERS=1 bash scripts/gpu-wheels.sh   # + transformers 5.23 (13 MB): ~66 MB, over it
#
# Then: run(carry=[".whl"], command="bash scripts/gpu-check.sh") (see ../.library/device/README.md).
# wandb (a large binary) is left out: the GPU tests and bench log to CSV.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >>.git/info/exclude
pins() {  # the exact pin of each name: constraints.txt, else pyproject.toml's dependencies
    for name in "$@"; do
        grep -i "^$name==" constraints.txt || grep -io "\"$name==[^\"]*\"" pyproject.toml | tr -d '"'
    done
}
wanted=(bitsandbytes hydra-core omegaconf hydra-optuna-sweeper optuna alembic Mako colorlog SQLAlchemy
    pydantic pydantic_core annotated-types typing-inspection peft)
[ "${WITH_TRANSFORMERS:-0}" = 1 ] && wanted+=(transformers)
rm -rf .whl && mkdir .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl $(pins "${wanted[@]}")
du -cb .whl/*.whl | tail -1 | awk '{printf "%.1f MB of wheels in .whl/\n", $1 / 1e6}'
