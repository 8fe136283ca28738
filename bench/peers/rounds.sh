#!/bin/bash
# Interleaved timing rounds on LiH, 256 walkers: nnqmc against FermiNet small, each configuration
# once per round, so that a slow spell of the machine hits both codes alike. Not run by CI.
#
#   FERMINET_PYTHON=/path/to/fnvenv/bin/python ROUNDS="1 2 3 4 5" OUT=/tmp/rounds \
#       bash bench/peers/rounds.sh
#
# ONLY="nnspring64 fnkfac64" runs just those configurations. Each run writes
# OUT/<name>_r<round>.log; its last line is a JSON object with
# "seconds_per_step" (and, for nnqmc, the parts). FermiNet runs with YNNPACK off and with
# glibc's huge-page tunable, the two process settings the nnqmc command makes for itself.
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
OUT=${OUT:-/tmp/rounds}
mkdir -p "$OUT"
export OMP_NUM_THREADS=2 OPENBLAS_NUM_THREADS=1
FN="env XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type= GLIBC_TUNABLES=glibc.malloc.hugetlb=1 ${FERMINET_PYTHON:?set FERMINET_PYTHON} $HERE/ferminet_lih.py --steps 30 --size small"
NN="${NNQMC:-nnqmc} bench $ROOT/systems/lih.toml --walkers 256 --steps 20"
run() {
  local name=$1
  shift
  case " ${ONLY:-${name%_r*}} " in *" ${name%_r*} "*) ;; *) return ;; esac
  (cd /tmp && eval "$@") > "$OUT/$name.log" 2>&1
  echo "$name rc=$? $(tail -1 "$OUT/$name.log" | cut -c1-120)"
}
for i in ${ROUNDS:-1 2 3}; do
  run nnspring64_r$i $NN
  run fnkfac64_r$i $FN --dtype float64
  run nnspringmx_r$i $NN --set precision=mixed
  run nnadam64_r$i $NN --set train.optimizer=adam
  run fnadam64_r$i $FN --dtype float64 --optimizer adam
  run fnnone64_r$i $FN --dtype float64 --optimizer none
  run nnspring32_r$i $NN --set precision=float32
  run fnkfac32_r$i $FN --dtype float32
  run nnadam32_r$i $NN --set precision=float32 train.optimizer=adam
  run fnadam32_r$i $FN --dtype float32 --optimizer adam
  run fnnone32_r$i $FN --dtype float32 --optimizer none
done
