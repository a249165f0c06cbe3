#!/usr/bin/env bash
# Runs the given command (default: `dvc repro`) inside the mounted or baked-in repository.
# DVC needs a git repository, and every MLflow run is tagged with the commit it ran at.
set -euo pipefail
cd /workspace
if [ ! -e .git ]; then
  # The baked-in copy of the sources (.dockerignore leaves .git out): give it a repository of its own,
  # so DVC works; its commit is the image snapshot, not a commit of the project.
  git init -q && git add -A && git -c user.name=cecl -c user.email=cecl@localhost commit -qm "image snapshot"
elif ! git rev-parse --verify -q HEAD >/dev/null; then
  # A mounted repository git cannot read (e.g. a worktree whose main .git is outside the mount):
  # say so now rather than let every run be tagged git_commit=unknown.
  echo "cecl-entrypoint: git cannot read the repository in /workspace:" >&2
  git rev-parse HEAD >&2 || true
  exit 1
fi
exec "$@"
