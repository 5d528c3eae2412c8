#!/usr/bin/env bash
# A one-node SLURM on this machine, for the tests marked `slurm` (tests/test_slurm.py):
#   bash .ci/slurm.sh start    # install (Debian's slurm-wlm and munge) where missing, configure, start
#   bash .ci/slurm.sh stop
# Needs root (apt-get, the daemons). The node is this machine (`hostname -s`) with all its CPUs;
# jobs run as the user who submits them. Ends with `sinfo` once the node answers.
set -euo pipefail
action=${1:-start}
conf=/etc/slurm/slurm.conf

stop() {
    pkill -x slurmctld || true
    pkill -x slurmd || true
    pkill -x munged || true
}

if [ "$action" = stop ]; then
    stop
    exit 0
fi

if ! command -v slurmctld > /dev/null || ! command -v munged > /dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge > /dev/null
fi

# munge: its key, its socket folder owned by its user.
[ -s /etc/munge/munge.key ] || { dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2> /dev/null; }
chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
mkdir -p /run/munge /var/log/munge /var/lib/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge
pgrep -x munged > /dev/null || runuser -u munge -- /usr/sbin/munged

node=$(hostname -s)
cpus=$(nproc)
mkdir -p /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
cat > "$conf" << CONF
ClusterName=resnet-lit-ci
SlurmctldHost=$node
SlurmUser=root
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
ReturnToService=2
MpiDefault=none
# Finished jobs leave the controller's list after a minute (the default: five).
MinJobAge=60
NodeName=$node CPUs=$cpus State=UNKNOWN
PartitionName=ci Nodes=$node Default=YES MaxTime=INFINITE State=UP
CONF

pgrep -x slurmctld > /dev/null || /usr/sbin/slurmctld
pgrep -x slurmd > /dev/null || /usr/sbin/slurmd
for _ in $(seq 120); do
    if sinfo -h -o %T 2> /dev/null | grep -q -E '^(idle|mixed|allocated)'; then
        sinfo
        exit 0
    fi
    sleep 2
done
echo "slurm.sh: the node did not become idle within 4 minutes; see /var/log/slurm/" >&2
sinfo >&2 || true
exit 1
