#!/bin/sh
# edgekit on-device harness: run one command, sample its memory, the thermal zones and
# the CPU clocks, write trace files. POSIX sh: runs under toybox/mksh (Android),
# dash and busybox sh (Raspberry Pi OS / Debian). No bashisms, 32-bit safe arithmetic
# (mksh), no helper left running.
#
# usage: sh harness.sh -o OUTDIR -i INTERVAL_MS [-a CPU_MASK] [-p PSS_MS] -- CMD [ARGS...]
#   -p: read Pss (smaps_rollup, costly on big mappings) about every PSS_MS ms (default 1000; 0 = every sample)
#
# The sampler forks nothing per sample where the shell allows it: /proc files are read
# with the `read` builtin, rows are written with `echo` (mksh's printf is not a builtin),
# the clock is $EPOCHREALTIME (mksh, bash, busybox) or /proc/uptime, and the wait between
# samples is `read -t` on a private FIFO (mksh, bash, busybox) instead of `sleep`. A shell
# without `read -t` (dash, posh) re-executes the script under mksh, bash or busybox when
# one is installed (EDGEKIT_HARNESS_REEXEC=0 keeps the current shell, which then forks one
# `sleep` per sample). Each forked helper takes CPU time from the measured command on a
# device whose every core runs its threads. With -a MASK the sampler itself moves to the
# online CPUs outside MASK when there are any (harness.tsv `sampler_affinity`).
#
# Writes (see docs/contracts.md):
#   OUTDIR/runner.out, runner.err   stdout / stderr of CMD
#   OUTDIR/mem.tsv       t_ms vmrss_kb vmhwm_kb rss_anon_kb rss_file_kb rss_shmem_kb vmswap_kb pss_kb
#   OUTDIR/thermal.tsv   t_ms phase zone type temp_mc        (phase: before|during|after)
#   OUTDIR/cpufreq.tsv   t_ms phase cpu cur_khz
#   OUTDIR/harness.tsv   key<TAB>value: start_epoch_ms end_epoch_ms pid interval_ms exit_status ...
# t_ms counts from the harness start. Exit status = CMD's exit status; 125 = harness
# usage error (nothing was run).

# dash and posh have neither $EPOCHREALTIME nor `read -t`: sampling would fork a clock
# and a sleep per sample. Re-execute under a shell that has both, when one is installed.
if [ -n "${EDGEKIT_HARNESS_REEXECED:-}" ]; then
  unset EDGEKIT_HARNESS_REEXECED
elif [ "${EDGEKIT_HARNESS_REEXEC:-1}" != 0 ] && [ -z "${EPOCHREALTIME:-}" ]; then
  for _sh in mksh bash busybox; do
    command -v "$_sh" >/dev/null 2>&1 || continue
    EDGEKIT_HARNESS_REEXECED=1; export EDGEKIT_HARNESS_REEXECED
    [ "$_sh" = busybox ] && exec busybox sh "$0" "$@"
    exec "$_sh" "$0" "$@"
  done
fi
SHELL_NAME=sh
[ -n "${KSH_VERSION:-}" ] && SHELL_NAME=mksh
[ -n "${BASH_VERSION:-}" ] && SHELL_NAME=bash

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

# --- clocks. Epochs (start/end, two reads): date +%s%N where it works (coreutils,
# toybox), else seconds. Per-sample clock: $EPOCHREALTIME (microseconds, no fork) where
# the shell has it, else /proc/uptime (10 ms, read by the builtin), never a command.
DATE_NS=0
_ns=$(date +%s%N 2>/dev/null)
case $_ns in ''|*[!0-9]*) ;; *) [ ${#_ns} -ge 16 ] && DATE_NS=1 ;; esac
CLOCK=uptime
case ${EPOCHREALTIME:-} in [0-9]*.[0-9]*) CLOCK=epochrealtime ;; esac
if [ "${EDGEKIT_HARNESS_CLOCK:-}" = uptime ]; then CLOCK=uptime; DATE_NS=0; fi   # tests exercise the fallback

# strip0 VALUE: sets _v to VALUE without leading zeros (no subshell)
strip0() { _v=$1; while :; do case $_v in 0?*) _v=${_v#0} ;; *) break ;; esac; done; }

# read_clock: sets CS (seconds) and CM (milliseconds within the second)
read_clock() {
  if [ $CLOCK = epochrealtime ]; then
    _up=$EPOCHREALTIME
    CS=${_up%.*}
    _f=${_up#*.}000
    strip0 "${_f%"${_f#???}"}"; CM=$_v
  else
    read _up _rest < /proc/uptime
    CS=${_up%.*}
    _f=${_up#*.}00
    strip0 "${_f%"${_f#??}"}"; CM=$(( _v * 10 ))
  fi
}
epoch_ms() {
  if [ $DATE_NS = 1 ]; then _ns=$(date +%s%N); echo "${_ns%??????}"; else echo "$(date +%s)000"; fi
}
read_clock; S0=$CS; M0=$CM
now() { read_clock; T=$(( (CS - S0) * 1000 + CM - M0 )); }

# --- wait of INTERVAL ms: `read -t` on a FIFO nobody writes (no fork), else sleep ------
FRAC=$(printf '%d.%03d' $((INTERVAL / 1000)) $((INTERVAL % 1000)))
SLEEP=$FRAC
WAIT=sleep
_fifo="$OUT/.harness-wait.$$"
rm -f "$_fifo"
if mkfifo "$_fifo" 2>/dev/null && exec 6<>"$_fifo"; then
  rm -f "$_fifo"   # the open descriptor keeps the FIFO; nothing is left in OUTDIR
  # a shell whose read has -t with fractions returns from this at once with the line
  printf 'x\n' >&6
  _x=""
  read -t 0.001 _x <&6 2>/dev/null
  if [ "$_x" = x ]; then WAIT=read_t; else exec 6>&-; fi
else
  rm -f "$_fifo"
fi
if [ $WAIT = sleep ] && ! sleep 0.001 2>/dev/null; then SLEEP=$(( (INTERVAL + 999) / 1000 )); fi
pause() {
  # mksh reports a read -t interrupted by SIGCHLD (the command ended): not an error here
  if [ $WAIT = read_t ]; then read -t "$SLEEP" _x <&6 2>/dev/null; else sleep "$SLEEP"; fi
}

TAB=$(printf '\t')
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
    echo "$T$TAB$1$TAB${_z##*thermal_zone}$TAB$_ty$TAB$_t" >&4
  done
  for _c in /sys/devices/system/cpu/cpu[0-9]*; do
    [ -r "$_c/cpufreq/scaling_cur_freq" ] || continue
    _f=""
    read _f < "$_c/cpufreq/scaling_cur_freq" 2>/dev/null || continue
    case $_f in ''|*[!0-9]*) continue ;; esac
    echo "$T$TAB$1$TAB${_c##*/cpu}$TAB$_f" >&5
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
      VmSwap:) _swap=$_v; break ;;   # the last field wanted: skip the rest of the file
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
  echo "$T$TAB$_rss$TAB$_hwm$TAB$_anon$TAB$_file$TAB$_shm$TAB$_swap$TAB$_pss" >&3
  return 0
}

START_EPOCH=$(epoch_ms)
thermal before

if [ -n "$MASK" ]; then
  taskset "$MASK" "$@" </dev/null >"$OUT/runner.out" 2>"$OUT/runner.err" 3>&- 4>&- 5>&- 6>&- &
else
  "$@" </dev/null >"$OUT/runner.out" 2>"$OUT/runner.err" 3>&- 4>&- 5>&- 6>&- &
fi
PID=$!

# the sampler leaves the command's CPUs to it: move this shell (and the helpers it still
# starts) to the online CPUs outside MASK, when there are any
SAMPLER_MASK=""
if [ -n "$MASK" ]; then
  ONLINE=0
  if read _on < /sys/devices/system/cpu/online 2>/dev/null; then
    _rest=$_on,
    while [ -n "$_rest" ]; do
      _r=${_rest%%,*}; _rest=${_rest#*,}
      [ -n "$_r" ] || continue
      _a=${_r%-*}; _b=${_r#*-}
      case $_a$_b in *[!0-9]*) ONLINE=0; break ;; esac
      while [ "$_a" -le "$_b" ] && [ "$_a" -le 30 ]; do ONLINE=$(( ONLINE | (1 << _a) )); _a=$((_a + 1)); done
    done
  fi
  _m=${MASK#0x}
  case $_m in ''|*[!0-9a-fA-F]*) _m=0 ;; esac
  [ ${#_m} -le 7 ] || _m=0   # wider masks than 28 bits stay unhandled (32-bit shell arithmetic)
  _free=$(( ONLINE & ~0x$_m ))
  if [ "$_m" != 0 ] && [ "$_free" -gt 0 ]; then
    _hex=$(printf '%x' "$_free")
    taskset -p "$_hex" $$ >/dev/null 2>&1 && SAMPLER_MASK=$_hex
  fi
fi

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
  pause
done
wait "$PID"
STATUS=$?
trap - TERM INT HUP
thermal after
END_EPOCH=$(epoch_ms)
exec 3>&- 4>&- 5>&-
[ $WAIT = read_t ] && exec 6>&-

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
  printf 'sampler_affinity\t%s\n' "$SAMPLER_MASK"
  printf 'shell\t%s\n' "$SHELL_NAME"
  printf 'wait\t%s\n' "$WAIT"
} > "$OUT/harness.tsv.tmp" && mv -f "$OUT/harness.tsv.tmp" "$OUT/harness.tsv"
exit "$STATUS"
