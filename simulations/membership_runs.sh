#!/usr/bin/env bash
# The membership simulator runs quoted in docs/benchmarks.md, one JSON file each (and the plot).
#
#   simulations/membership_runs.sh [OUT]            the runs of the docs (OUT: simulations/results)
#   simulations/membership_runs.sh --quick [OUT]    the same runs at 100 members (200 for the
#                                                   10,000 one) for 20 s, for tests/simulations/;
#                                                   OUT defaults to a new temporary directory, so
#                                                   quick figures never land in simulations/results
#
# Runs this checkout's code with $PYTHON (default python3); prints the output directory.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
quick=0
if [[ ${1:-} == --quick ]]; then
    quick=1
    shift
fi
if ((quick)); then
    out=${1:-$(mktemp -d -t p2ps-membership-runs-XXXXXX)}
    big=100 huge=200 small=100 duration=20
else
    out=${1:-simulations/results}
    big=1000 huge=10000 small=100 duration=120
fi
mkdir -p "$out"
sim() { PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" "${PYTHON:-python3}" -m p2pswarm.cli.main sim swim "$@"; }
common=(--duration "$duration" --loss 0.05 --seed 1 --json)
sim --nodes "$big" "${common[@]}" --crash 10 --plot "$out/swim-1000.png" > "$out/swim-1000.json"
sim --nodes "$big" "${common[@]}" --crash 10 --no-lifeguard > "$out/swim-1000-no-lifeguard.json"
sim --nodes "$small" "${common[@]}" --crash 10 > "$out/swim-100.json"
sim --nodes "$big" "${common[@]}" --slow 10 --lifeguard > "$out/swim-1000-slow-lifeguard.json"
sim --nodes "$big" "${common[@]}" --slow 10 --no-lifeguard > "$out/swim-1000-slow-no-lifeguard.json"
sim --nodes "$huge" "${common[@]}" --crash 10 > "$out/swim-10000.json"
echo "$out"
