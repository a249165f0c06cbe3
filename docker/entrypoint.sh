#!/usr/bin/env bash
# Runs the given command (default: `dvc repro`) inside the mounted or baked-in repository.
# DVC needs a git repository; a plain copy of the sources gets one on first start.
set -euo pipefail
cd /workspace
if [ ! -d .git ]; then
  git init -q && git add -A && git -c user.name=cecl -c user.email=cecl@localhost commit -qm "image snapshot"
fi
exec "$@"
