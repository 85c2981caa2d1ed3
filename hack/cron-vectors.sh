#!/usr/bin/env bash
# Regenerates backup-operator/src/schedule/testdata/robfig-vectors.tsv: the
# next run times the Kubernetes CronJob controller's cron library
# (github.com/robfig/cron/v3 v3.0.1) computes around every DST transition of
# 2026-2028 in a few zones. Test data for the operator's schedule module
# (which is Rust); the throw-away Go program below only asks the upstream
# library and is not part of the product. Lines: schedule, zone, after, next
# (Unix seconds; next 0 = none).
set -euo pipefail
out=$(cd "$(dirname "$0")/.." && pwd)/backup-operator/src/schedule/testdata/robfig-vectors.tsv
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
cat > go.mod <<'MOD'
module cronvectors
go 1.24
MOD
cat > main.go <<'GO'
package main

import (
	"fmt"
	"time"

	"github.com/robfig/cron/v3"
)

func main() {
	zones := []string{"Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "America/Santiago", "Asia/Kolkata"}
	daily := []string{"0 2 * * *", "30 1 * * *", "30 2 * * *", "15 2 * * *", "0 0 * * 0", "0 3 * * 1-5"}
	subdaily := []string{"0 */3 * * *", "30 * * * *", "*/20 1-3 * * *"}
	for _, zone := range zones {
		loc, err := time.LoadLocation(zone)
		if err != nil {
			panic(err)
		}
		var transitions []time.Time
		t := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
		_, prev := t.In(loc).Zone()
		for t.Year() < 2029 {
			t = t.Add(30 * time.Minute)
			if _, off := t.In(loc).Zone(); off != prev {
				transitions = append(transitions, t)
				prev = off
			}
		}
		if len(transitions) == 0 {
			transitions = []time.Time{time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC)}
		}
		emit := func(spec string, from, to time.Time) {
			s, err := cron.ParseStandard("CRON_TZ=" + zone + " " + spec)
			if err != nil {
				panic(err)
			}
			at := from
			for at.Before(to) {
				next := s.Next(at)
				n := int64(0)
				if !next.IsZero() {
					n = next.Unix()
				}
				fmt.Printf("%s\t%s\t%d\t%d\n", spec, zone, at.Unix(), n)
				if next.IsZero() {
					return
				}
				at = next
			}
		}
		for _, tr := range transitions {
			for _, spec := range daily {
				emit(spec, tr.Add(-50*time.Hour), tr.Add(50*time.Hour))
			}
			for _, spec := range subdaily {
				emit(spec, tr.Add(-6*time.Hour), tr.Add(6*time.Hour))
			}
		}
	}
}
GO
GOFLAGS=-mod=mod go get github.com/robfig/cron/v3@v3.0.1 >/dev/null 2>&1
mkdir -p "$(dirname "$out")"
GOFLAGS=-mod=mod go run . > "$out"
echo "wrote $(wc -l < "$out") vectors to $out"
