#!/usr/bin/env bash
# The main job on the embedded default data (MovieTweetings-100K, MIT licence), from nothing:
# set up a venv, train MCCL with the CPU budget preset (4 epochs: about 3 minutes on 2 cores),
# report test metrics (ranking on 500 sampled test users), and recommend
# for a training user and for a brand-new user given three ratings (no retraining).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/cmcrec ]; then
  python3 -m venv .venv
  .venv/bin/python -m pip install --quiet -e .
fi
. .venv/bin/activate

OUT="${CMCREC_QUICKSTART_OUT:-runs/quickstart-mccl}"
cmcrec train --model mccl --preset cpu --epochs 4 --dataset movietweetings-100k \
  --out "$OUT" --k 10 --rank-users 500 --candidates 100
echo
echo "Top 5 for training user 1:"
cmcrec recommend --model "$OUT" --user 1 -k 5
echo
echo "Top 5 for a new user who loved The Dark Knight and Inception and disliked Twilight:"
cmcrec recommend --model "$OUT" --ratings "0468569=10,1375666=10,1099212=2" -k 5
