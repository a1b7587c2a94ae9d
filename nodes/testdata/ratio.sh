#!/bin/sh
# Runs the nodes/ WriteFile benchmarks (one small file to 10 real sshd nodes,
# FanOut versus sequential; see nodes/bench_test.go) and prints the
# benchmark lines followed by "fan-out vs sequential: N.Nx".
# Usage (from the repository root, as root, with openssh-server installed):
#   sh nodes/testdata/ratio.sh [extra go test flags]
set -eu
out=$(go test -run '^$' -bench 'WriteFile(FanOut|Sequential)' -benchtime "${BENCHTIME:-20x}" "$@" ./nodes/)
printf '%s\n' "$out"
printf '%s\n' "$out" | awk '
  /^BenchmarkWriteFileFanOut/    { for (i = 1; i < NF; i++) if ($(i+1) == "ns/op") fan = $i }
  /^BenchmarkWriteFileSequential/ { for (i = 1; i < NF; i++) if ($(i+1) == "ns/op") seq = $i }
  END {
    if (fan == "" || seq == "") { print "ratio.sh: benchmark results missing" > "/dev/stderr"; exit 1 }
    printf "fan-out vs sequential: %.1fx (sequential %.1f ms, fan-out %.1f ms per round of writes)\n", seq / fan, seq / 1e6, fan / 1e6
  }'
