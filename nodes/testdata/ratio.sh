#!/bin/sh
# Runs the nodes/ benchmarks and prints their lines followed by the ratios:
#   - one small file written to 10 real sshd nodes, fan-out versus
#     sequential (nodes/bench_test.go): "fan-out vs sequential: N.Nx";
#   - (BenchmarkApplyFiles: a 40-file batch on a real sshd, ms per write;
#     no ratio, it has no other variant to compare with)
#   - one batch read of 14 files on a real sshd, the careful per-file
#     script versus the fast one (nodes/readfast.go): "fast read vs
#     careful: N.Nx";
#   - one small operation with input through a 50 ms round trip, a plain
#     SSH session versus the Client's exec (nodes/latency_bench_test.go):
#     "rotate's exec vs session: N.Nx".
# Usage (from the repository root, as root, with openssh-server installed):
#   sh nodes/testdata/ratio.sh [extra go test flags]
set -eu
out=$(go test -run '^$' -bench 'WriteFile(FanOut|Sequential)|Operation(Session|Exec)|ApplyFiles$|ReadFiles(Fast|Careful)' -benchtime "${BENCHTIME:-20x}" "$@" ./nodes/)
printf '%s\n' "$out"
printf '%s\n' "$out" | awk '
  function nsop(   i) { for (i = 1; i < NF; i++) if ($(i+1) == "ns/op") return $i }
  /^BenchmarkWriteFileFanOut/     { fan = nsop() }
  /^BenchmarkWriteFileSequential/ { seq = nsop() }
  /^BenchmarkOperationSession/    { sess = nsop() }
  /^BenchmarkOperationExec/       { one = nsop() }
  /^BenchmarkReadFilesFast/       { rfast = nsop() }
  /^BenchmarkReadFilesCareful/    { rcare = nsop() }
  END {
    if (fan == "" || seq == "" || sess == "" || one == "" || rfast == "" || rcare == "") { print "ratio.sh: benchmark results missing" > "/dev/stderr"; exit 1 }
    printf "fan-out vs sequential: %.1fx (sequential %.1f ms, fan-out %.1f ms per round of writes)\n", seq / fan, seq / 1e6, fan / 1e6
    printf "fast read vs careful, 14 files on one node: %.1fx (careful %.1f ms, fast %.1f ms)\n", rcare / rfast, rcare / 1e6, rfast / 1e6
    printf "rotate'"'"'s exec vs session, an operation with input through a 50 ms round trip: %.1fx (session %.1f ms, exec %.1f ms)\n", sess / one, sess / 1e6, one / 1e6
  }'
