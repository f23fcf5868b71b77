#!/bin/sh
# edgekit on-device harness: run one command, sample its memory, the thermal zones and
# the CPU clocks, write trace files. POSIX sh: runs under toybox/mksh (Android),
# dash and busybox sh (Raspberry Pi OS / Debian). No bashisms, 32-bit safe arithmetic
# (mksh), no helper left running.
#
# usage: sh harness.sh -o OUTDIR -i INTERVAL_MS [-a CPU_MASK] [-p PSS_MS] -- CMD [ARGS...]
#   -p: read Pss (smaps_rollup, costly on big mappings) about every PSS_MS ms (default 1000; 0 = every sample)
#
# Writes (see docs/contracts.md):
#   OUTDIR/runner.out, runner.err   stdout / stderr of CMD
#   OUTDIR/mem.tsv       t_ms vmrss_kb vmhwm_kb rss_anon_kb rss_file_kb rss_shmem_kb vmswap_kb pss_kb
#   OUTDIR/thermal.tsv   t_ms phase zone type temp_mc        (phase: before|during|after)
#   OUTDIR/cpufreq.tsv   t_ms phase cpu cur_khz
#   OUTDIR/harness.tsv   key<TAB>value: start_epoch_ms end_epoch_ms pid interval_ms exit_status ...
# t_ms counts from the harness start. Exit status = CMD's exit status; 125 = harness
# usage error (nothing was run).

OUT=""
INTERVAL=50
MASK=""
PSS_MS=1000
usage() { echo "usage: sh harness.sh -o OUTDIR -i INTERVAL_MS [-a CPU_MASK] [-p PSS_MS] -- CMD [ARGS...]" >&2; exit 125; }
while [ $# -gt 0 ]; do
  case $1 in
    -o) [ $# -ge 2 ] || usage; OUT=$2; shift 2 ;;
    -i) [ $# -ge 2 ] || usage; INTERVAL=$2; shift 2 ;;
    -a) [ $# -ge 2 ] || usage; MASK=$2; shift 2 ;;
    -p) [ $# -ge 2 ] || usage; PSS_MS=$2; shift 2 ;;
    --) shift; break ;;
    *) usage ;;
  esac
done
[ -n "$OUT" ] && [ $# -ge 1 ] || usage
case $INTERVAL in ''|*[!0-9]*) echo "harness: -i wants milliseconds, got '$INTERVAL'" >&2; exit 125 ;; esac
[ "$INTERVAL" -ge 1 ] || INTERVAL=1
case $PSS_MS in ''|*[!0-9]*) echo "harness: -p wants milliseconds, got '$PSS_MS'" >&2; exit 125 ;; esac
mkdir -p "$OUT" || { echo "harness: cannot create $OUT" >&2; exit 125; }
if [ -n "$MASK" ]; then
  command -v taskset >/dev/null 2>&1 || { echo "harness: -a $MASK given but taskset is missing" >&2; exit 125; }
fi

# --- clock: date +%s%N where it works (coreutils, toybox), else /proc/uptime (10 ms) ---
strip0() { _v=$1; while :; do case $_v in 0?*) _v=${_v#0} ;; *) break ;; esac; done; echo "$_v"; }
CLOCK=uptime
_ns=$(date +%s%N 2>/dev/null)
case $_ns in ''|*[!0-9]*) ;; *) [ ${#_ns} -ge 16 ] && CLOCK=date_ns ;; esac
[ "${EDGEKIT_HARNESS_CLOCK:-}" = uptime ] && CLOCK=uptime   # tests exercise the fallback

# read_clock: sets CS (seconds) and CM (milliseconds within the second)
read_clock() {
  if [ $CLOCK = date_ns ]; then
    _ns=$(date +%s%N)
    CS=${_ns%?????????}
    _f=${_ns#"$CS"}
    CM=$(strip0 "${_f%??????}")
  else
    read _up _rest < /proc/uptime
    CS=${_up%.*}
    _f=${_up#*.}
    CM=$(( $(strip0 "${_f%"${_f#??}"}") * 10 ))
  fi
}
epoch_ms() {
  if [ $CLOCK = date_ns ]; then _ns=$(date +%s%N); echo "${_ns%??????}"; else echo "$(date +%s)000"; fi
}
read_clock; S0=$CS; M0=$CM
now() { read_clock; T=$(( (CS - S0) * 1000 + CM - M0 )); }

# --- sleep of INTERVAL ms (fractional sleep where supported) --------------------------
if sleep 0.001 2>/dev/null; then
  SLEEP=$(printf '%d.%03d' $((INTERVAL / 1000)) $((INTERVAL % 1000)))
else
  SLEEP=$(( (INTERVAL + 999) / 1000 ))
fi

exec 3>"$OUT/mem.tsv" 4>"$OUT/thermal.tsv" 5>"$OUT/cpufreq.tsv"
printf 't_ms\tvmrss_kb\tvmhwm_kb\trss_anon_kb\trss_file_kb\trss_shmem_kb\tvmswap_kb\tpss_kb\n' >&3
printf 't_ms\tphase\tzone\ttype\ttemp_mc\n' >&4
printf 't_ms\tphase\tcpu\tcur_khz\n' >&5

thermal() {  # $1 = phase
  now
  for _z in /sys/class/thermal/thermal_zone*; do
    [ -r "$_z/temp" ] || continue
    _t=""; _ty=""
    read _t < "$_z/temp" 2>/dev/null || continue
    case $_t in ''|*[!0-9-]*) continue ;; esac
    read _ty < "$_z/type" 2>/dev/null
    printf '%s\t%s\t%s\t%s\t%s\n' "$T" "$1" "${_z##*thermal_zone}" "$_ty" "$_t" >&4
  done
  for _c in /sys/devices/system/cpu/cpu[0-9]*; do
    [ -r "$_c/cpufreq/scaling_cur_freq" ] || continue
    _f=""
    read _f < "$_c/cpufreq/scaling_cur_freq" 2>/dev/null || continue
    case $_f in ''|*[!0-9]*) continue ;; esac
    printf '%s\t%s\t%s\t%s\n' "$T" "$1" "${_c##*/cpu}" "$_f" >&5
  done
}

# sample_mem PID: one mem.tsv row; returns 1 when the process is gone or a zombie
sample_mem() {
  [ -r "/proc/$1/status" ] || return 1
  _rss=""; _hwm=""; _anon=""; _file=""; _shm=""; _swap=""; _pss=""; _state=""
  while read _k _v _rest; do
    case $_k in
      State:) _state=$_v ;;
      VmHWM:) _hwm=$_v ;;
      VmRSS:) _rss=$_v ;;
      RssAnon:) _anon=$_v ;;
      RssFile:) _file=$_v ;;
      RssShmem:) _shm=$_v ;;
      VmSwap:) _swap=$_v ;;
    esac
  done < "/proc/$1/status" 2>/dev/null
  [ "$_state" = Z ] && return 1
  [ -n "$_rss" ] || return 1   # gone between the test and the read, or a kernel thread
  # smaps_rollup walks every page table of the process under its mmap lock: on a model of
  # GBs that slows the measured process, so Pss is read only every PSS_EVERY samples
  # (-p, default about once a second; 0 = every sample). Other rows leave pss_kb empty.
  if [ "$PSS_N" -eq 0 ] && [ -r "/proc/$1/smaps_rollup" ]; then
    while read _k _v _rest; do
      case $_k in Pss:) _pss=$_v; break ;; esac
    done < "/proc/$1/smaps_rollup" 2>/dev/null
  fi
  now
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$T" "$_rss" "$_hwm" "$_anon" "$_file" "$_shm" "$_swap" "$_pss" >&3
  return 0
}

START_EPOCH=$(epoch_ms)
thermal before

if [ -n "$MASK" ]; then
  taskset "$MASK" "$@" </dev/null >"$OUT/runner.out" 2>"$OUT/runner.err" &
else
  "$@" </dev/null >"$OUT/runner.out" 2>"$OUT/runner.err" &
fi
PID=$!

# never leave the command running if the harness is stopped
cleanup() { kill "$PID" 2>/dev/null; sleep 1; kill -9 "$PID" 2>/dev/null; }
trap 'cleanup; trap - EXIT; exit 143' TERM
trap 'cleanup; trap - EXIT; exit 130' INT
trap 'cleanup; trap - EXIT; exit 129' HUP

# thermal/cpufreq "during" about once a second
EVERY=$(( 1000 / INTERVAL )); [ "$EVERY" -ge 1 ] || EVERY=1
N=0; SAMPLES=0; PSS_N=0
PSS_EVERY=$(( PSS_MS / INTERVAL )); [ "$PSS_EVERY" -ge 1 ] || PSS_EVERY=1
while kill -0 "$PID" 2>/dev/null; do
  sample_mem "$PID" || break
  PSS_N=$((PSS_N + 1)); [ "$PSS_N" -ge "$PSS_EVERY" ] && PSS_N=0
  SAMPLES=$((SAMPLES + 1))
  N=$((N + 1))
  if [ "$N" -ge "$EVERY" ]; then N=0; thermal during; fi
  sleep "$SLEEP"
done
wait "$PID"
STATUS=$?
trap - TERM INT HUP
thermal after
END_EPOCH=$(epoch_ms)
exec 3>&- 4>&- 5>&-

{
  printf 'start_epoch_ms\t%s\n' "$START_EPOCH"
  printf 'end_epoch_ms\t%s\n' "$END_EPOCH"
  printf 'pid\t%s\n' "$PID"
  printf 'interval_ms\t%s\n' "$INTERVAL"
  printf 'exit_status\t%s\n' "$STATUS"
  printf 'samples\t%s\n' "$SAMPLES"
  printf 'pss_every\t%s\n' "$PSS_EVERY"
  printf 'clock\t%s\n' "$CLOCK"
  printf 'affinity\t%s\n' "$MASK"
} > "$OUT/harness.tsv.tmp" && mv -f "$OUT/harness.tsv.tmp" "$OUT/harness.tsv"
exit "$STATUS"
