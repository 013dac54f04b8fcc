#!/usr/bin/env bash
# Start a single-node SLURM cluster on this (Debian, root) machine for the pipeline's SLURM test.
#
#   .ci/slurm-setup.sh          install slurm-wlm + munge if needed, write /etc/slurm/slurm.conf,
#                               start munged (as user munge), slurmctld and slurmd (as root)
#   .ci/slurm-setup.sh stop     stop the three daemons again
#
# Idempotent: a cluster that already answers `sinfo` is left alone. No accounting database
# (squeue is the status command), proctrack/linuxproc + task/none (no cgroups needed in a container).
set -euo pipefail

CONF_DIR=/etc/slurm
SPOOL=/var/spool
LOG_DIR=/var/log/slurm
PID_DIR=/run/slurm

die() { echo "slurm-setup: $*" >&2; exit 1; }

if [[ "${1:-}" == "stop" ]]; then
    for name in slurmd slurmctld; do
        pidfile="$PID_DIR/$name.pid"
        [[ -f "$pidfile" ]] && kill "$(cat "$pidfile")" 2>/dev/null || true
    done
    [[ -f /run/munge/munged.pid ]] && kill "$(cat /run/munge/munged.pid)" 2>/dev/null || true
    exit 0
fi

[[ "$(id -u)" == 0 ]] || die "must run as root (it installs packages and starts daemons)"

if command -v sinfo >/dev/null 2>&1 && timeout 10 sinfo -h -o '%T' 2>/dev/null | grep -qE 'idle|mix|alloc'; then
    echo "slurm-setup: cluster already up"; exit 0
fi

if ! command -v slurmctld >/dev/null 2>&1 || ! command -v munged >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends slurm-wlm munge
fi

# --- munge: a key readable only by the munge user, daemon running as munge -------------------
install -d -o munge -g munge -m 0700 /etc/munge /var/lib/munge /var/log/munge
install -d -o munge -g munge -m 0755 /run/munge
if [[ ! -s /etc/munge/munge.key ]]; then
    if command -v mungekey >/dev/null 2>&1; then
        runuser -u munge -- mungekey --create --keyfile /etc/munge/munge.key
    else
        dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
    fi
fi
chown munge:munge /etc/munge/munge.key
chmod 0400 /etc/munge/munge.key
if ! pgrep -u munge -x munged >/dev/null 2>&1; then
    runuser -u munge -- /usr/sbin/munged || die "munged did not start; see /var/log/munge/munged.log"
fi
for _ in $(seq 20); do munge -n >/dev/null 2>&1 && break; sleep 0.5; done
munge -n | unmunge >/dev/null || die "munged does not answer"

# --- slurm.conf: this host as controller and the only compute node ---------------------------
host=$(hostname -s)
node_line=$(slurmd -C | head -n 1)                  # NodeName=<host> CPUs=... RealMemory=...
[[ "$node_line" == NodeName=* ]] || die "slurmd -C gave no node line: $node_line"
install -d "$CONF_DIR" "$SPOOL/slurmctld" "$SPOOL/slurmd" "$LOG_DIR" "$PID_DIR"
cat >"$CONF_DIR/slurm.conf" <<EOF
# single-node test cluster written by .ci/slurm-setup.sh
ClusterName=lopci
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
ReturnToService=2
MinJobAge=600
SlurmctldPidFile=$PID_DIR/slurmctld.pid
SlurmdPidFile=$PID_DIR/slurmd.pid
StateSaveLocation=$SPOOL/slurmctld
SlurmdSpoolDir=$SPOOL/slurmd
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
$node_line State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
# No cgroup.conf: proctrack/linuxproc + task/none need none (22.05 has no CgroupPlugin=disabled).

# --- daemons ------------------------------------------------------------------------------------
pgrep -x slurmctld >/dev/null 2>&1 || slurmctld || die "slurmctld did not start; see $LOG_DIR/slurmctld.log"
pgrep -x slurmd >/dev/null 2>&1 || slurmd || die "slurmd did not start; see $LOG_DIR/slurmd.log"
for _ in $(seq 60); do
    if timeout 5 sinfo -h -o '%T' 2>/dev/null | grep -qE 'idle|mix|alloc'; then
        sinfo
        echo "slurm-setup: cluster up"
        exit 0
    fi
    sleep 1
done
scontrol update nodename="$host" state=resume 2>/dev/null || true
timeout 5 sinfo -h -o '%T' 2>/dev/null | grep -qE 'idle|mix|alloc' \
    || die "node did not become idle; see $LOG_DIR/slurmctld.log and $LOG_DIR/slurmd.log"
echo "slurm-setup: cluster up"
