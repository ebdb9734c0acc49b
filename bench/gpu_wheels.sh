#!/usr/bin/env bash
# Wheels for the GPU machine, which has torch, transformers, pyarrow, numpy,
# pandas, pyyaml and tqdm but not optuna or pydantic (the LocalPool path of
# bench/headline_study.py needs no Ray and no boto3). Run here, where pip
# reaches the package index; the device call then carries .whl (ignored by git):
#   bash bench/gpu_wheels.sh            # writes .whl/
# Versions are those of this project's venv; Python 3.12 there.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >> .git/info/exclude
rm -rf .whl && mkdir -p .whl
pins=(optuna==5.0.0 pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0
      typing-inspection==0.4.5 typing_extensions==4.16.0 colorlog==6.12.0
      SQLAlchemy==2.1.9 alembic==1.20.1 Mako==1.4.3 dill==0.4.1)
for pin in "${pins[@]}"; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform any -d .whl "$pin"
done
ls -la .whl && du -sh .whl
