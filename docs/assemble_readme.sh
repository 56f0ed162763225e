#!/usr/bin/env bash
# README.md is assembled from docs/sections/ (one file per part, edited there).
set -euo pipefail
cd "$(dirname "$0")/sections"
order=(00-top scheduler unet pipeline training likelihood sample_quality experiments performance 99-dev)
for part in "${order[@]}"; do
  [ -f "$part.md" ] || continue
  cat "$part.md"
  echo
done > ../../README.md
