#!/usr/bin/env bash
# A real one-node SLURM cluster on this machine, for logivote's SLURM test and for trying the SLURM
# profile without a cluster: munge, MariaDB, slurmdbd (job accounting, so `sacct` works), slurmctld
# and slurmd from Debian's packages, with two fake GPUs as GRES. Everything (config, state, logs,
# pid files, munge key and socket, database) lives in one private folder; no system service is
# touched, and `stop` stops only the daemons whose pid files are in that folder.
#
#   .test/slurm/cluster.sh install   # as root: apt-get install the Debian packages (CI calls this)
#   .test/slurm/cluster.sh start     # idempotent: does nothing if the cluster already answers
#   eval "$(.test/slurm/cluster.sh env)"   # PATH and SLURM_CONF for sbatch, squeue, sacct, ...
#   .test/slurm/cluster.sh status
#   .test/slurm/cluster.sh stop      # cancels this cluster's jobs, then stops its daemons
#
# Settings (environment): LOGIVOTE_SLURM_DIR (default /tmp/logivote-slurm; keep it short: the munge
# socket path must fit a unix socket name), LOGIVOTE_SLURM_GPUS (fake GPUs, default 2),
# LOGIVOTE_SLURM_PORT (first of four TCP ports on 127.0.0.1/this host, default 16817).
# Needs root (slurmd launches jobs as their users). Configuration and limits: .test/slurm/README.md.
set -euo pipefail

C=${LOGIVOTE_SLURM_DIR:-/tmp/logivote-slurm}
GPUS=${LOGIVOTE_SLURM_GPUS:-2}
PORT=${LOGIVOTE_SLURM_PORT:-16817}
CTLD_PORT=$PORT SLURMD_PORT=$((PORT + 1)) DBD_PORT=$((PORT + 2)) DB_PORT=$((PORT + 3))
HOST=$(hostname -s)
SOCKET=$C/munge/munge.socket
export SLURM_CONF=$C/etc/slurm.conf # this cluster's, for the daemons and every client call below
PACKAGES=(slurm-wlm slurmdbd munge mariadb-server)
CLIENTS=(sacct sacctmgr salloc sattach sbatch scancel scontrol sinfo sprio squeue srun sshare sstat)
# start order; stop runs it backwards
DAEMONS=(munged mariadbd slurmdbd slurmctld slurmd)

say() { echo "cluster.sh: $*" >&2; }
die() { say "$*"; exit 1; }

pid_of() { # the pid in a daemon's pid file, if that process is alive
  local file=$C/run/$1.pid pid
  [ -s "$file" ] || return 1
  pid=$(cat "$file")
  kill -0 "$pid" 2>/dev/null || return 1
  echo "$pid"
}

wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...: poll COMMAND until it succeeds
  local seconds=$1 what=$2 i
  shift 2
  for ((i = 0; i < seconds * 4; i++)); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.25
  done
  die "timed out after ${seconds}s waiting for $what (logs in $C/log/)"
}

port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

need_binaries() {
  local b
  for b in munged mariadbd mariadb-install-db slurmdbd slurmctld slurmd sbatch sacct; do
    command -v "$b" >/dev/null || [ -x "/usr/sbin/$b" ] ||
      die "$b not found: run '.test/slurm/cluster.sh install' as root (apt-get install ${PACKAGES[*]})"
  done
  [ "$(id -u)" = 0 ] || die "must run as root (slurmd starts jobs as their users)"
}

write_config() {
  mkdir -p "$C"/{etc,munge,run,log,spool/ctld,spool/d,dev,db,bin}
  chmod 755 "$C" "$C/munge" # slurmctld refuses a munge socket in a folder others cannot read
  if [ ! -s "$C/munge/munge.key" ]; then
    dd if=/dev/urandom of="$C/munge/munge.key" bs=1024 count=1 status=none
  fi
  chmod 400 "$C/munge/munge.key"

  local mem cpus i
  cpus=$(nproc)
  mem=$(awk '/^MemTotal:/ {printf "%d", $2 / 1024 * 0.9}' /proc/meminfo) # a margin: slurmd refuses a node claiming more than it has
  for ((i = 0; i < GPUS; i++)); do # character devices, never opened: gres.conf rejects plain files
    [ -c "$C/dev/nvidia$i" ] || mknod "$C/dev/nvidia$i" c 195 "$i"
  done

  cat >"$C/etc/slurm.conf" <<CONF
# written by .test/slurm/cluster.sh
ClusterName=logivote
SlurmctldHost=$HOST
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$SOCKET
CredType=cred/munge
StateSaveLocation=$C/spool/ctld
SlurmdSpoolDir=$C/spool/d
SlurmctldPidFile=$C/run/slurmctld.pid
SlurmdPidFile=$C/run/slurmd.pid
SlurmctldLogFile=$C/log/slurmctld.log
SlurmdLogFile=$C/log/slurmd.log
# no cgroups in a container: processes tracked by parent pid, no CPU binding or memory enforcement
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# without it a job that names no memory takes the whole node
DefMemPerCPU=1000
MpiDefault=none
ReturnToService=2
MinJobAge=300
GresTypes=gpu
# job accounting through slurmdbd and MariaDB, so that sacct (Snakemake's status query) works;
# slurmdbd ignores AuthInfo for its munge socket and reads it from here
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$DBD_PORT
AccountingStoragePass=$SOCKET
# record GPUs in sacct's AllocTRES
AccountingStorageTRES=gres/gpu
# keep the plugin's --comment (rule and wildcards) for sacct's Comment field
AccountingStoreFlags=job_comment
JobAcctGatherType=jobacct_gather/linux
NodeName=$HOST CPUs=$cpus RealMemory=$mem Gres=gpu:$GPUS State=UNKNOWN
PartitionName=main Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
CONF
  cat >"$C/etc/gres.conf" <<CONF
AutoDetect=off
NodeName=$HOST Name=gpu File=$C/dev/nvidia[0-$((GPUS - 1))]
CONF
  cat >"$C/etc/slurmdbd.conf" <<CONF
AuthType=auth/munge
AuthInfo=socket=$SOCKET
DbdHost=localhost
DbdPort=$DBD_PORT
SlurmUser=root
PidFile=$C/run/slurmdbd.pid
LogFile=$C/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=logivote
StorageLoc=slurm_acct_db
CONF
  chmod 600 "$C/etc/slurmdbd.conf" # slurmdbd refuses a readable file: it holds a password
  cat >"$C/etc/init.sql" <<CONF
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'logivote';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
CONF
  # the job step plugin drops SLURM_CONF inside jobs: wrappers first on PATH bring it back
  local name
  for name in "${CLIENTS[@]}"; do
    printf '#!/bin/sh\nSLURM_CONF=%s exec /usr/bin/%s "$@"\n' "$SLURM_CONF" "$name" >"$C/bin/$name"
    chmod 755 "$C/bin/$name"
  done
}

start_daemon() { # start_daemon NAME COMMAND...: start one daemon in the background, its output to its log
  pid_of "$1" >/dev/null && return 0
  setsid "${@:2}" </dev/null >>"$C/log/$1.out" 2>&1 &
}

cluster_answers() { sinfo -h -o %T 2>/dev/null | grep -q -E '^(idle|mixed|allocated)'; }

all_alive() {
  local d
  for d in "${DAEMONS[@]}"; do pid_of "$d" >/dev/null || return 1; done
}

start() {
  need_binaries
  if all_alive && cluster_answers; then
    say "already running ($C)"
    return 0
  fi
  stop_daemons # whatever is left of an earlier, partial start of this folder
  local t0=$SECONDS
  write_config

  start_daemon munged munged --force --key-file="$C/munge/munge.key" --socket="$SOCKET" \
    --pid-file="$C/run/munged.pid" --log-file="$C/log/munged.log" --seed-file="$C/munge/munged.seed"
  wait_for 20 munged test -S "$SOCKET"

  if [ ! -d "$C/db/mysql" ]; then
    mariadb-install-db --no-defaults --datadir="$C/db" --user=root --auth-root-authentication-method=normal \
      --skip-test-db >"$C/log/mariadb-install.log" 2>&1 || die "mariadb-install-db failed: $C/log/mariadb-install.log"
  fi
  start_daemon mariadbd mariadbd --no-defaults --datadir="$C/db" --user=root --bind-address=127.0.0.1 \
    --port="$DB_PORT" --socket="$C/run/mariadbd.sock" --pid-file="$C/run/mariadbd.pid" \
    --log-error="$C/log/mariadbd.log" --skip-name-resolve --skip-log-bin --innodb-buffer-pool-size=64M \
    --init-file="$C/etc/init.sql"
  wait_for 60 MariaDB port_open 127.0.0.1 "$DB_PORT"

  start_daemon slurmdbd slurmdbd
  wait_for 60 slurmdbd port_open 127.0.0.1 "$DBD_PORT"
  start_daemon slurmctld slurmctld -f "$C/etc/slurm.conf"
  wait_for 60 slurmctld port_open "$HOST" "$CTLD_PORT"
  start_daemon slurmd slurmd -f "$C/etc/slurm.conf"
  wait_for 60 "the node to be idle" cluster_answers
  say "started in $((SECONDS - t0)) s: $(sinfo -h -N -o '%N %T cpus=%c mem=%m gres=%G')"
}

stop_daemons() {
  local i d pid
  for ((i = ${#DAEMONS[@]} - 1; i >= 0; i--)); do
    d=${DAEMONS[i]}
    pid=$(pid_of "$d") || continue
    kill "$pid" 2>/dev/null || true
    for ((t = 0; t < 120; t++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    if kill -0 "$pid" 2>/dev/null; then kill -9 "$pid" 2>/dev/null || true; say "$d ($pid) killed"; fi
  done
}

stop() {
  if pid_of slurmctld >/dev/null; then # cancel this cluster's jobs first, so no job step outlives it
    local jobs
    jobs=$(squeue -h -o %i 2>/dev/null || true)
    if [ -n "$jobs" ]; then
      # shellcheck disable=SC2086
      scancel $jobs || true
      for ((t = 0; t < 120; t++)); do
        [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break
        sleep 0.25
      done
    fi
  fi
  stop_daemons
  say "stopped ($C)"
}

status() {
  local d rc=0
  for d in "${DAEMONS[@]}"; do
    if pid=$(pid_of "$d"); then echo "$d running (pid $pid)"; else echo "$d not running"; rc=1; fi
  done
  if [ "$rc" = 0 ]; then sinfo -N -o '%N %T %c %m %G'; fi
  return "$rc"
}

case "${1:-}" in
  install)
    [ "$(id -u)" = 0 ] || die "install needs root"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${PACKAGES[@]}" >/dev/null
    ;;
  start) start ;;
  stop) stop ;;
  status) status ;;
  env) printf 'export SLURM_CONF=%q\nexport PATH=%q:"$PATH"\n' "$SLURM_CONF" "$C/bin" ;;
  *) die "usage: $0 install|start|stop|status|env" ;;
esac
