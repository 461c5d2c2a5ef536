#!/usr/bin/env bash
# Runs semi_ssl on every worker of a Cloud TPU VM slice (v4-32, v5p-64, ...). See usage below.
set -euo pipefail

prog=${0##*/}

usage() {
  cat <<EOF
Usage: $prog --name NAME --zone ZONE --config CONFIG --workdir gs://BUCKET/RUN [options] [-- MAIN_FLAGS...]

Installs semi_ssl on every worker of a Cloud TPU VM slice, then runs the same command on all
of them through 'gcloud compute tpus tpu-vm ssh --worker=all'; JAX finds the other workers
itself. Running it again resumes the run from WORKDIR's latest checkpoint.

Required:
  --name NAME               TPU VM name
  --zone ZONE               e.g. us-central2-b
  --config CONFIG           config file, relative to the repository: configs/<method>/<benchmark>.py
  --workdir DIR             run directory; a gs:// path, so that every worker sees the same one

Options:
  --project PROJECT         Google Cloud project (default: gcloud's configured one)
  --create                  create the slice first (gcloud compute tpus tpu-vm create)
  --accelerator-type TYPE   slice type for --create, e.g. v4-32
  --version VERSION         TPU VM runtime for --create (default: tpu-ubuntu2204-base)
  --delete                  delete the slice at the end, whether the run succeeded or not
  --repo URL                git URL the workers clone (default: this checkout's origin remote)
  --ref REF                 branch, tag or commit to run (default: this checkout's HEAD commit
                            when --repo is defaulted, else the remote's default branch)
  --remote-dir DIR          checkout on each worker, relative to the home directory
                            (default: semi_ssl)
  --python-version X.Y      Python of the workers' virtual environment, made with uv
                            (default: 3.11; the TPU images' own Python 3.10 is too old for JAX)
  --no-install              skip the install step (the workers are already set up)
  --dry-run                 print the commands, one per line, instead of running them
  -h, --help                this text

Everything after '--' is passed to semi_ssl.main, e.g. -- --config.seed=1 --config.data_dir=gs://B/tfds

Example:
  $prog --name ssl-v4 --zone us-central2-b --create --accelerator-type v4-32 \\
    --config configs/suave/imagenet_10pct.py --workdir gs://my-bucket/suave_in10 --delete \\
    -- --config.data_dir=gs://my-bucket/tensorflow_datasets
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

quoted() {  # The arguments, each shell-quoted, on one line.
  local line
  printf -v line '%q ' "$@"
  printf '%s\n' "${line% }"
}

dry_run=0
run() {  # Prints the command (--dry-run) or runs it.
  if ((dry_run)); then
    quoted "$@"
  else
    "$@"
  fi
}

name='' zone='' project='' accelerator_type='' version='tpu-ubuntu2204-base'
repo='' ref='' remote_dir='semi_ssl' python_version='3.11' config='' workdir=''
create=0 delete=0 install=1
extra=()

while (($#)); do
  if [[ $1 == --*=* ]]; then  # --flag=value: the same as --flag value.
    set -- "${1%%=*}" "${1#*=}" "${@:2}"
    [[ -n $2 ]] || usage_error "$1 needs a value"
  fi
  case $1 in
    -h | --help) usage; exit 0 ;;
    --name) need_value "$@"; name=$2; shift ;;
    --zone) need_value "$@"; zone=$2; shift ;;
    --project) need_value "$@"; project=$2; shift ;;
    --accelerator-type) need_value "$@"; accelerator_type=$2; shift ;;
    --version) need_value "$@"; version=$2; shift ;;
    --repo) need_value "$@"; repo=$2; shift ;;
    --ref) need_value "$@"; ref=$2; shift ;;
    --remote-dir) need_value "$@"; remote_dir=$2; shift ;;
    --python-version) need_value "$@"; python_version=$2; shift ;;
    --config) need_value "$@"; config=$2; shift ;;
    --workdir) need_value "$@"; workdir=$2; shift ;;
    --create) create=1 ;;
    --delete) delete=1 ;;
    --no-install) install=0 ;;
    --dry-run) dry_run=1 ;;
    --) shift; extra=("$@"); break ;;
    *) usage_error "unknown argument '$1' (flags for semi_ssl.main go after '--')" ;;
  esac
  shift
done

for required in name zone config workdir; do
  [[ -n ${!required} ]] || usage_error "--$required is required"
done
if ((create)) && [[ -z $accelerator_type ]]; then
  usage_error "--create needs --accelerator-type (e.g. v4-32)"
fi
if [[ $workdir != gs://* ]]; then
  printf '%s: warning: --workdir %s is not a gs:// path; each worker would write its own copy.\n' \
    "$prog" "$workdir" >&2
fi

if ((install)) && [[ -z $repo ]]; then
  root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  if ! repo=$(git -C "$root" remote get-url origin 2>/dev/null); then
    usage_error "--repo is required (this checkout has no 'origin' remote)"
  fi
  if [[ -z $ref ]]; then
    ref=$(git -C "$root" rev-parse HEAD)
    if [[ -n $(git -C "$root" status --porcelain --untracked-files=no) ]]; then
      printf '%s: warning: uncommitted changes in %s are not on the workers.\n' "$prog" "$root" >&2
    fi
    if [[ -z $(git -C "$root" branch --remotes --contains "$ref" 2>/dev/null) ]]; then
      printf '%s: warning: commit %s is on no remote branch; push it first.\n' "$prog" "$ref" >&2
    fi
  fi
fi

gcloud_where=(--zone="$zone")
if [[ -n $project ]]; then
  gcloud_where+=(--project="$project")
fi

# The commands each worker runs, quoted for its shell (relative paths: from the home directory).
# Install: fetch the exact ref into REMOTE_DIR (re-runs update it), a Python >= 3.11 virtual
# environment made by uv, the package with GCS support for gs:// workdirs and the TPU build of
# the jax it pins (setup.py's extras).
install_command="git init --quiet $(quoted "$remote_dir")"
install_command+=" && cd $(quoted "$remote_dir")"
install_command+=" && git fetch --quiet $(quoted "$repo" "${ref:-HEAD}")"
install_command+=" && git checkout --quiet --detach FETCH_HEAD"
install_command+=" && python3 -m pip install --quiet --user uv"
install_command+=" && { [ -x .venv/bin/python ] || python3 -m uv venv --quiet --seed"
install_command+=" --python $(quoted "$python_version") .venv; }"
install_command+=" && .venv/bin/pip install --quiet -e $(quoted '.[gcs,tpu]')"
main_command="cd $(quoted "$remote_dir") && $(quoted .venv/bin/python -m semi_ssl.main \
  --config="$config" --workdir="$workdir" ${extra[@]+"${extra[@]}"})"

ssh_all=(gcloud compute tpus tpu-vm ssh "$name" "${gcloud_where[@]}" --worker=all)

if ((create)); then
  run gcloud compute tpus tpu-vm create "$name" "${gcloud_where[@]}" \
    --accelerator-type="$accelerator_type" --version="$version"
fi
status=0
if ((install)); then
  run "${ssh_all[@]}" --command="$install_command" || status=$?
fi
if ((status == 0)); then
  run "${ssh_all[@]}" --command="$main_command" || status=$?
fi
if ((delete)); then
  run gcloud compute tpus tpu-vm delete "$name" "${gcloud_where[@]}" --quiet
fi
exit "$status"
