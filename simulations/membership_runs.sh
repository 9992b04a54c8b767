#!/usr/bin/env bash
# The membership simulator runs quoted in docs/benchmarks.md, one JSON line each.
set -euo pipefail
out=${1:-simulations/results}
mkdir -p "$out"
p2pswarm sim swim --nodes 1000 --duration 120 --crash 10 --loss 0.05 --seed 1 --json \
    --plot "$out/swim-1000.png" > "$out/swim-1000.json"
p2pswarm sim swim --nodes 1000 --duration 120 --crash 10 --loss 0.05 --seed 1 --no-lifeguard --json \
    > "$out/swim-1000-no-lifeguard.json"
p2pswarm sim swim --nodes 100 --duration 120 --crash 10 --loss 0.05 --seed 1 --json > "$out/swim-100.json"
p2pswarm sim swim --nodes 1000 --duration 120 --slow 10 --loss 0.05 --seed 1 --lifeguard --json \
    > "$out/swim-1000-slow-lifeguard.json"
p2pswarm sim swim --nodes 1000 --duration 120 --slow 10 --loss 0.05 --seed 1 --no-lifeguard --json \
    > "$out/swim-1000-slow-no-lifeguard.json"
p2pswarm sim swim --nodes 10000 --duration 120 --crash 10 --loss 0.05 --seed 1 --json > "$out/swim-10000.json"
