#!/usr/bin/env bash
# Runs semi_ssl on this machine, as one process or as N JAX processes. See usage below.
set -euo pipefail

prog=${0##*/}

usage() {
  cat <<EOF
Usage: $prog --config CONFIG --workdir DIR [--num_processes N] [--cpu_devices K] [options] [-- MAIN_FLAGS...]

Runs PY -m semi_ssl.main --config=CONFIG --workdir=DIR MAIN_FLAGS... from the current
directory (the repository root, or anywhere with semi_ssl installed). With N > 1 it starts N
processes that find each other through 127.0.0.1:PORT, as the hosts of a pod would
(--coordinator_address=127.0.0.1:PORT --num_processes=N --process_id=i), waits for all of
them, and stops the others as soon as one fails; Ctrl-C stops them all (they save a
checkpoint first). Exit status: 0 if every process succeeded. N > 1 is for trying the
multi-host code path on one machine, normally with --cpu_devices (on a GPU machine every
process would see every GPU).

Options:
  --num_processes N   JAX processes to start (default: 1)
  --cpu_devices K     run on the CPU, with K devices per process (XLA_FLAGS=
                      --xla_force_host_platform_device_count=K, JAX_PLATFORMS=cpu)
  --port PORT         coordinator port for N > 1 (default: 12355)
  --python PY         Python interpreter (or \$PYTHON; default: python)
  --dry-run           print the commands, one per line, instead of running them
  -h, --help          this text

Everything after '--' is passed to semi_ssl.main, e.g. -- --config.seed=1 --config.num_steps=100

Example, 2 processes of 4 CPU devices each (8 devices in all):
  $prog --num_processes 2 --cpu_devices 4 --python .venv/bin/python \\
    --config configs/suave/digits.py --workdir workdirs/digits_2proc
EOF
}

usage_error() {
  printf '%s: error: %s\n' "$prog" "$1" >&2
  printf "Try '%s --help'.\n" "$prog" >&2
  exit 2
}

need_value() {  # need_value FLAG [VALUE...]
  if (($# < 2)) || [[ -z $2 ]]; then
    usage_error "$1 needs a value"
  fi
}

need_count() {  # need_count FLAG VALUE: VALUE must be a positive integer.
  if ! [[ $2 =~ ^[1-9][0-9]*$ ]]; then
    usage_error "$1 needs a positive integer, not '$2'"
  fi
}

quoted() {  # The arguments, each shell-quoted, on one line.
  local line
  printf -v line '%q ' "$@"
  printf '%s\n' "${line% }"
}

config='' workdir='' num_processes=1 cpu_devices='' port=12355 python=${PYTHON:-python} dry_run=0
extra=()

while (($#)); do
  if [[ $1 == --*=* ]]; then  # --flag=value: the same as --flag value.
    set -- "${1%%=*}" "${1#*=}" "${@:2}"
    [[ -n $2 ]] || usage_error "$1 needs a value"
  fi
  case $1 in
    -h | --help) usage; exit 0 ;;
    --config) need_value "$@"; config=$2; shift ;;
    --workdir) need_value "$@"; workdir=$2; shift ;;
    --num_processes | --num-processes) need_value "$@"; need_count "$1" "$2"; num_processes=$2; shift ;;
    --cpu_devices | --cpu-devices) need_value "$@"; need_count "$1" "$2"; cpu_devices=$2; shift ;;
    --port) need_value "$@"; need_count "$1" "$2"; port=$2; shift ;;
    --python) need_value "$@"; python=$2; shift ;;
    --dry-run) dry_run=1 ;;
    --) shift; extra=("$@"); break ;;
    *) usage_error "unknown argument '$1' (flags for semi_ssl.main go after '--')" ;;
  esac
  shift
done

[[ -n $config ]] || usage_error "--config is required"
[[ -n $workdir ]] || usage_error "--workdir is required"

prefix=()  # Environment for every process.
if [[ -n $cpu_devices ]]; then
  prefix=(env "XLA_FLAGS=${XLA_FLAGS:+$XLA_FLAGS }--xla_force_host_platform_device_count=$cpu_devices"
          JAX_PLATFORMS=cpu)
fi
main=("$python" -m semi_ssl.main --config="$config" --workdir="$workdir")

command=()
build_command() {  # build_command I: sets command to process I's command.
  command=(${prefix[@]+"${prefix[@]}"} "${main[@]}")
  if ((num_processes > 1)); then
    command+=(--coordinator_address="127.0.0.1:$port" --num_processes="$num_processes"
              --process_id="$1")
  fi
  command+=(${extra[@]+"${extra[@]}"})
}

if ((dry_run)); then
  for ((i = 0; i < num_processes; i++)); do
    build_command "$i"
    quoted "${command[@]}"
  done
  exit 0
fi

if ((num_processes == 1)); then
  build_command 0
  exec "${command[@]}"
fi

pids=()
stop_all() {  # stop_all SIGNAL: sends SIGNAL to every process still running.
  local pid
  for pid in ${pids[@]+"${pids[@]}"}; do
    if [[ -n $pid ]]; then
      kill -"$1" "$pid" 2>/dev/null || true
    fi
  done
}
interrupted=0
# shellcheck disable=SC2329  # Called by the trap below.
on_signal() {
  interrupted=1
  printf '%s: stopping all %d processes\n' "$prog" "$num_processes" >&2
  stop_all TERM
}
trap on_signal INT TERM

for ((i = 0; i < num_processes; i++)); do
  build_command "$i"
  "${command[@]}" &
  pids+=("$!")
done

# Background processes ignore Ctrl-C, and a process whose peer died can wait a long time
# for it: poll, and on the first failure (or a signal) stop the rest, killing any that
# still run a minute later.
failed=0 running=$num_processes stopping_since=-1
while ((running > 0)); do
  running=0
  for i in "${!pids[@]}"; do
    pid=${pids[i]}
    [[ -n $pid ]] || continue
    if kill -0 "$pid" 2>/dev/null; then
      running=$((running + 1))
      continue
    fi
    status=0
    wait "$pid" || status=$?
    pids[i]=''
    if ((status != 0)); then
      printf '%s: process %d exited with status %d\n' "$prog" "$i" "$status" >&2
      if ((failed == 0 && interrupted == 0)); then
        stop_all TERM
      fi
      failed=1
    fi
  done
  if ((failed || interrupted)) && ((stopping_since < 0)); then
    stopping_since=$SECONDS
  fi
  if ((running > 0 && stopping_since >= 0 && SECONDS - stopping_since > 60)); then
    stop_all KILL
  fi
  if ((running > 0)); then
    sleep 1
  fi
done
if ((interrupted)); then
  exit 130
fi
exit "$failed"
