#!/usr/bin/env bash
# Regenerates backup-operator/retention/testdata/restic-forget-vectors.tsv: what
# restic 0.18.1 (hack/build-restic.sh) decides with `forget --keep-*` on the
# same snapshot lists the mover's retention module is unit-tested with.
# Snapshots are written by restic itself with TZ=<zone>, so their recorded
# offsets are that zone's (what the mover's buckets in the policy's timeZone
# must match). Lines: zone, forget flags, the times restic keeps, the times
# it removes (space-separated RFC 3339, from `forget --dry-run --json`).
# Takes a few minutes (one restic process per snapshot). Needs jq.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=$root/backup-operator/retention/testdata/restic-forget-vectors.tsv
restic=$("$root/hack/build-restic.sh")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export RESTIC_PASSWORD=vectors
mkdir -p "$work/src" && echo data > "$work/src/file"

# Local wall times (interpreted in the zone by restic): DST changes of 2024
# in Europe and America, a year and ISO-week boundary, two snapshots in one
# hour, dense days, sparse months and years.
times() {
  local d
  for h in 20 21 22 23; do echo "2024-03-09 $h:00:00"; done
  for h in 00 01 02 03 04 05 06; do echo "2024-03-10 $h:00:00"; echo "2024-03-31 $h:00:00"; done
  for m in 00 30; do for h in 22 23; do echo "2024-10-26 $h:$m:00"; done; done
  for m in 00 30; do for h in 00 01 02 03 04; do echo "2024-10-27 $h:$m:00"; echo "2024-11-03 $h:$m:00"; done; done
  echo "2024-06-12 10:05:00"; echo "2024-06-12 10:45:00"; echo "2024-06-12 11:10:00"
  for i in $(seq 0 22); do d=$(date -u -d "2024-12-20 +$i days" +%F); echo "$d 23:30:00"; done
  for i in $(seq 0 3 330); do d=$(date -u -d "2024-01-02 +$i days" +%F); echo "$d 12:00:00"; done
  for y in 2021 2022 2023; do for m in 01 02 03 04 05 06 07 08 09 10 11 12; do echo "$y-$m-01 00:15:00"; done; done
  # The two oldest share an hour: restic keeps the oldest while a rule has count left.
  echo "2018-07-04 08:00:00"; echo "2018-07-04 08:20:00"; echo "2019-12-31 23:59:00"; echo "2020-01-01 00:01:00"
}

policies=(
  "--keep-last 5"
  "--keep-hourly 10"
  "--keep-hourly 40"
  "--keep-daily 7"
  "--keep-daily 60"
  "--keep-weekly 5"
  "--keep-weekly 30"
  "--keep-monthly 12"
  "--keep-monthly 50"
  "--keep-yearly 3"
  "--keep-yearly 10"
  "--keep-hourly 1000"
  "--keep-daily 1000"
  "--keep-last 2 --keep-yearly 20"
  "--keep-daily 7 --keep-weekly 4 --keep-monthly 12 --keep-yearly 2"
  "--keep-hourly 24 --keep-daily 14 --keep-weekly 8"
  "--keep-last 3 --keep-daily 3 --keep-weekly 2 --keep-monthly 2 --keep-yearly 1"
  "--keep-within 10d"
  "--keep-within 1y2m3d"
  "--keep-within 36h --keep-monthly 6"
  "--keep-within 2m --keep-yearly 5"
)

: > "$out.tmp"
for zone in Europe/Berlin America/New_York Asia/Kolkata; do
  repo=$work/repo-${zone//\//-}
  "$restic" -r "$repo" init -q
  echo "$zone: writing $(times | wc -l) snapshots" >&2
  times | sort -u | while read -r t; do
    TZ=$zone "$restic" -r "$repo" --no-cache backup -q --host vectors --time "$t" "$work/src" >/dev/null
  done
  for p in "${policies[@]}"; do
    # shellcheck disable=SC2086 # $p holds several flags
    json=$("$restic" -r "$repo" --no-cache forget --dry-run --json $p)
    kept=$(jq -r '[.[0].keep // [] | .[].time] | join(" ")' <<<"$json")
    removed=$(jq -r '[.[0].remove // [] | .[].time] | join(" ")' <<<"$json")
    printf '%s\t%s\t%s\t%s\n' "$zone" "$p" "$kept" "$removed" >> "$out.tmp"
  done
done
mv "$out.tmp" "$out"
echo "wrote $out" >&2
