#!/usr/bin/env bash
# local_slurm.sh - a real, throwaway SLURM cluster on this machine, for the launcher tests.
#
# tests/launch/conftest.py starts it (two virtual nodes) when CI is set or SAM3_TEST_SLURM=1; run it
# by hand to keep a cluster up between test runs (the fixture reuses a running one):
#   sudo tests/launch/local_slurm.sh up && eval "$(tests/launch/local_slurm.sh env)"
# Adapted from the team's shared tools/local_slurm.sh: two nodes by default, and exit status 77
# when SLURM cannot run here (not root, packages missing and not installable), which the tests
# report as a skip with the message.
#
# Usage:  local_slurm.sh up|down|status|env|check|purge
#
#   up      install Debian's slurm/munge (and mariadb for accounting) if missing,
#           write a config under the state dir, start munged, [mariadbd, slurmdbd,]
#           slurmctld and slurmd as background daemons, and wait until every node
#           is idle. Idempotent: a healthy running cluster is left as it is.
#   down    cancel the cluster's jobs, then stop only the daemons this script
#           started (by the PIDs it recorded). Idempotent.
#   status  show the daemons, sinfo and squeue; exit 0 only if all is up.
#   env     print `export SLURM_CONF=...` (use: eval "$(local_slurm.sh env)").
#   check   smoke test: srun on every node, sbatch --wait --wrap, sacct.
#   purge   down, then delete the state dir.
#
# Needs root (slurmd must run as root) and, if the packages are missing,
# apt-get (Debian 12 / bookworm: slurm 22.05, munge 0.5, mariadb 10.11).
# Nothing uses systemd or cgroups: proctrack/linuxproc, task/none.
#
# Settings (environment variables):
#   LOCAL_SLURM_DIR          state dir (config, keys, spool, db, logs, pids) [/tmp/local-slurm]
#   LOCAL_SLURM_NODES        number of virtual nodes (one slurmd each)        [2]
#   LOCAL_SLURM_CPUS         CPUs declared per node                           [detected]
#   LOCAL_SLURM_MEM_MB       RealMemory per node, MB                          [detected / nodes]
#   LOCAL_SLURM_PARTITION    partition name                                   [debug]
#   LOCAL_SLURM_CLUSTER      cluster name                                     [localcluster]
#   LOCAL_SLURM_PORT_BASE    first TCP port on 127.0.0.1 (uses base..base+2, base+10+i) [16817]
#   LOCAL_SLURM_ACCOUNTING   1: slurmdbd+mariadb so sacct works (submitit uses sacct to see
#                            jobs that died without a result); 0: none       [1]
#   LOCAL_SLURM_CRED_EXPIRE  seconds; also how long a requeued job waits     [5]
#   LOCAL_SLURM_EDIT_HOSTS   1: add node names that do not resolve to /etc/hosts as
#                            127.0.0.1 (marked block, removed by down)        [1]
#   LOCAL_SLURM_LINK_CONF    1: if /etc/slurm/slurm.conf is absent, symlink it to ours
#                            so plain `sinfo` works (removed by down)        [1]
#   LOCAL_SLURM_APT          1: apt-get install missing packages; 0: never    [1]
#   LOCAL_SLURM_WAIT_S       seconds to wait for each daemon / the nodes      [60]

set -euo pipefail
umask 022
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

DIR="${LOCAL_SLURM_DIR:-/tmp/local-slurm}"
NODES="${LOCAL_SLURM_NODES:-2}"
PARTITION="${LOCAL_SLURM_PARTITION:-debug}"
CLUSTER="${LOCAL_SLURM_CLUSTER:-localcluster}"
PORT_BASE="${LOCAL_SLURM_PORT_BASE:-16817}"
ACCOUNTING="${LOCAL_SLURM_ACCOUNTING:-1}"
CRED_EXPIRE="${LOCAL_SLURM_CRED_EXPIRE:-5}"
EDIT_HOSTS="${LOCAL_SLURM_EDIT_HOSTS:-1}"
LINK_CONF="${LOCAL_SLURM_LINK_CONF:-1}"
USE_APT="${LOCAL_SLURM_APT:-1}"
WAIT_S="${LOCAL_SLURM_WAIT_S:-60}"

CONF="$DIR/etc/slurm.conf"
PIDS="$DIR/pids"
LOGS="$DIR/log"
MUNGE_SOCK="$DIR/run/munge/munge.sock"
DB_SOCK="$DIR/run/mysql/mysqld.sock"
CTLD_PORT=$PORT_BASE
DBD_PORT=$((PORT_BASE + 1))
DB_PORT=$((PORT_BASE + 2))
MARKER="$DIR/.local-slurm"
HOSTS_TAG="# local-slurm:$DIR"
SYS_CONF=/etc/slurm/slurm.conf
T0=$(date +%s.%N)

since() { awk -v a="$(date +%s.%N)" -v b="$1" 'BEGIN { printf "%.1f", a - b }'; }
log()  { printf '[local-slurm %5ss] %s\n' "$(since "$T0")" "$*" >&2; }
die()  { printf '[local-slurm] ERROR: %s\n' "$*" >&2; exit 1; }
# SLURM cannot run on this machine as things stand (not a bug of the cluster set-up)
unavailable() { printf '[local-slurm] UNAVAILABLE: %s\n' "$*" >&2; exit 77; }

# -- helpers ----------------------------------------------------------------

is_uint() { [[ "$1" =~ ^[0-9]+$ ]]; }

validate_settings() {
    is_uint "$NODES" && [ "$NODES" -ge 1 ] && [ "$NODES" -le 16 ] || die "LOCAL_SLURM_NODES must be 1..16, got '$NODES'"
    is_uint "$PORT_BASE" && [ "$PORT_BASE" -ge 1024 ] && [ "$PORT_BASE" -le 65000 ] || die "LOCAL_SLURM_PORT_BASE must be 1024..65000, got '$PORT_BASE'"
    is_uint "$CRED_EXPIRE" && [ "$CRED_EXPIRE" -ge 5 ] || die "LOCAL_SLURM_CRED_EXPIRE must be >= 5, got '$CRED_EXPIRE'"
    is_uint "$WAIT_S" || die "LOCAL_SLURM_WAIT_S must be a number, got '$WAIT_S'"
    [ -z "${LOCAL_SLURM_CPUS:-}" ] || { is_uint "$LOCAL_SLURM_CPUS" && [ "$LOCAL_SLURM_CPUS" -ge 1 ]; } || die "LOCAL_SLURM_CPUS must be a number >= 1"
    [ -z "${LOCAL_SLURM_MEM_MB:-}" ] || { is_uint "$LOCAL_SLURM_MEM_MB" && [ "$LOCAL_SLURM_MEM_MB" -ge 100 ]; } || die "LOCAL_SLURM_MEM_MB must be a number >= 100"
    [[ "$DIR" = /* ]] || die "LOCAL_SLURM_DIR must be an absolute path, got '$DIR'"
    case "${DIR%/}" in
        ""|/tmp|/etc|/usr|/var|/root|/home|/opt|/srv|/run|/bin|/sbin|/lib|/lib64|/boot|/dev|/proc|/sys)
            die "LOCAL_SLURM_DIR must be a dedicated directory, not '$DIR'" ;;
    esac
    [[ "$DIR" =~ ^[A-Za-z0-9_./-]+$ ]] || die "LOCAL_SLURM_DIR may hold only letters, digits and _ . / -: '$DIR'"
    [ "${#DIR}" -le 80 ] || die "LOCAL_SLURM_DIR is too long for a unix socket path (max 80 chars): '$DIR'"
    [[ "$PARTITION" =~ ^[A-Za-z0-9_-]+$ ]] || die "bad LOCAL_SLURM_PARTITION '$PARTITION'"
    [[ "$CLUSTER" =~ ^[a-z0-9_-]+$ ]] || die "LOCAL_SLURM_CLUSTER must be lowercase letters, digits, _ or -: '$CLUSTER'"
}

need_root() { [ "$(id -u)" -eq 0 ] || unavailable "must run as root (slurmd must be root to launch jobs); try: sudo $0 $*"; }

short_host() { local h; h=$(uname -n); echo "${h%%.*}"; }

# Node names: the machine's own short hostname for one node, nodeN for several.
node_names() {
    if [ "$NODES" -eq 1 ]; then short_host; else
        local i; for i in $(seq 1 "$NODES"); do echo "node$i"; done
    fi
}
node_list() { node_names | paste -sd, -; }

# start time (clock ticks since boot) of a live PID: with the PID it names one process
# for good. Zombies count as dead (PID 1 in some containers is slow to reap them).
proc_start() {
    local s; s=$(cat "/proc/$1/stat" 2> /dev/null) || return 1
    s=${s##*") "}
    # shellcheck disable=SC2086
    set -- $s
    case "$1" in Z|X|x) return 1 ;; esac
    echo "${20}"
}

# pidfile holds "PID STARTTIME NAME"
pid_alive() {
    local f="$1" pid st name now
    [ -s "$f" ] || return 1
    read -r pid st name < "$f" || return 1
    now=$(proc_start "$pid") || return 1
    [ "$now" = "$st" ]
}
pid_of() { awk '{print $1}' "$1" 2>/dev/null; }

# start_daemon NAME CMD... : run CMD in its own session, output to log, record PID
start_daemon() {
    local name="$1"; shift
    # 9>&- : the daemons must not inherit (and so keep holding) our lock
    SLURM_CONF="$CONF" setsid "$@" > "$LOGS/$name.out" 2>&1 < /dev/null 9>&- &
    local pid=$!
    local st=""; for _ in 1 2 3 4 5 6 7 8 9 10; do st=$(proc_start "$pid") && break; sleep 0.05; done
    [ -n "$st" ] || die "$name exited at once; see $LOGS/$name.out:$(echo; tail -n 20 "$LOGS/$name.out" 2>/dev/null)"
    echo "$pid $st $name" > "$PIDS/$name.pid"
}

show_log() {
    local f
    for f in "$@"; do
        [ -s "$f" ] || continue
        echo "----- last lines of $f -----" >&2
        grep -v 'pmix' "$f" | tail -n 25 >&2 || true
    done
}

# wait_until SECONDS DAEMONS DESCRIPTION CMD... : poll CMD until it succeeds; give up
# at once if one of the (space-separated) DAEMONS we started has died
wait_until() {
    local secs="$1" watch="$2" what="$3"; shift 3
    local end=$(( $(date +%s) + secs )) d
    while ! "$@" > /dev/null 2>&1; do
        for d in $watch; do
            pid_alive "$PIDS/$d.pid" || { log "$d (pid $(pid_of "$PIDS/$d.pid")) exited"; return 1; }
        done
        [ "$(date +%s)" -lt "$end" ] || { log "timed out after ${secs}s waiting: $what"; return 1; }
        sleep 0.2
    done
    log "$what"
}

port_in_use() { timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }

stop_pidfile() {
    local f="$1" pid name
    pid=$(pid_of "$f"); name=$(basename "$f" .pid)
    if pid_alive "$f"; then
        kill -TERM "$pid" 2>/dev/null || true
        local i; for i in $(seq 1 75); do pid_alive "$f" || break; sleep 0.2; done
        if pid_alive "$f"; then kill -KILL "$pid" 2>/dev/null || true; sleep 0.2; log "stopped $name (pid $pid, SIGKILL)"; else log "stopped $name (pid $pid)"; fi
    fi
    rm -f "$f"
}

# slurmstepd processes that our slurmd spawned (they inherit SLURM_CONF=$CONF)
our_stepds() {
    local p
    for p in /proc/[0-9]*; do
        [ "$(cat "$p/comm" 2>/dev/null)" = slurmstepd ] || continue
        { tr '\0' '\n' < "$p/environ"; } 2> /dev/null | grep -qx "SLURM_CONF=$CONF" && echo "${p#/proc/}"
    done
    return 0
}

settings_string() {
    echo "nodes=$NODES cpus=${LOCAL_SLURM_CPUS:-auto} mem=${LOCAL_SLURM_MEM_MB:-auto} partition=$PARTITION cluster=$CLUSTER ports=$PORT_BASE accounting=$ACCOUNTING cred_expire=$CRED_EXPIRE"
}

save_settings() {
    settings_string > "$DIR/settings"
    printf 'NODES=%q\nPARTITION=%q\nCLUSTER=%q\nACCOUNTING=%q\nPORT_BASE=%q\n' \
        "$NODES" "$PARTITION" "$CLUSTER" "$ACCOUNTING" "$PORT_BASE" > "$DIR/settings.env"
}

# check/status/down act on the cluster as it was brought up, whatever the environment says now
load_settings() {
    # shellcheck disable=SC1091
    if [ -f "$DIR/settings.env" ]; then . "$DIR/settings.env"; fi
}

daemon_names() {
    echo munged
    if [ "$ACCOUNTING" = 1 ]; then echo mariadbd; echo slurmdbd; fi
    echo slurmctld
    local n; for n in $(node_names); do echo "slurmd-$n"; done
}

all_running() {
    [ -f "$MARKER" ] && [ -f "$DIR/settings" ] || return 1
    local n; for n in $(daemon_names); do pid_alive "$PIDS/$n.pid" || return 1; done
}

any_pidfile() { compgen -G "$PIDS/*.pid" > /dev/null 2>&1; }
any_alive() { local f; for f in "$PIDS"/*.pid; do [ -e "$f" ] && pid_alive "$f" && return 0; done; return 1; }

# -- install ----------------------------------------------------------------

missing_cmds() {
    local c cmds=(munged munge slurmctld slurmd sinfo srun sbatch scontrol)
    [ "$ACCOUNTING" = 1 ] && cmds+=(slurmdbd sacct sacctmgr mariadb-install-db mariadb mariadb-admin)
    for c in "${cmds[@]}"; do command -v "$c" > /dev/null 2>&1 || echo "$c"; done
    if [ "$ACCOUNTING" = 1 ] && ! command -v mariadbd > /dev/null 2>&1 && ! command -v mysqld > /dev/null 2>&1; then echo mariadbd; fi
}

install_packages() {
    local missing; missing=$(missing_cmds | paste -sd' ' -)
    [ -z "$missing" ] && return 0
    local pkgs=(munge slurmctld slurmd slurm-client)
    [ "$ACCOUNTING" = 1 ] && pkgs+=(slurmdbd mariadb-server mariadb-client)
    [ "$USE_APT" = 1 ] || unavailable "missing commands: $missing; install: apt-get install ${pkgs[*]} (or set LOCAL_SLURM_APT=1)"
    command -v apt-get > /dev/null || unavailable "missing commands: $missing, and no apt-get: install slurm (slurmctld, slurmd, client), munge${ACCOUNTING:+, slurmdbd, mariadb} yourself"
    log "installing ${pkgs[*]} (missing: $missing)"
    # Keep apt from starting system-wide munge/slurm/mariadb services: we run our own.
    local made_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\n# local-slurm: temporary, no service starts during install\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d; made_policy=1
    fi
    local rc=1 try
    : > "$LOGS/apt.log"
    for try in 1 2 3; do
        rc=0
        {
            DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=180 -qq update &&
            DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=180 -y -qq \
                --no-install-recommends install "${pkgs[@]}"
        } >> "$LOGS/apt.log" 2>&1 || rc=$?
        [ "$rc" -eq 0 ] && break
        log "apt-get failed (exit $rc, try $try of 3)"; sleep $((try * 5))
    done
    [ "$made_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
    if [ "$rc" -ne 0 ]; then show_log "$LOGS/apt.log"; unavailable "apt-get failed (exit $rc); full log: $LOGS/apt.log"; fi
    missing=$(missing_cmds | paste -sd' ' -)
    [ -z "$missing" ] || unavailable "still missing after install: $missing"
    log "packages installed"
}

# -- configuration ----------------------------------------------------------

detect_node_resources() {
    local c; c=$(slurmd -C 2>/dev/null | head -n1) || true
    DET_CPUS=$(sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' <<< "$c"); DET_CPUS=${DET_CPUS:-$(nproc)}
    DET_MEM=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<< "$c")
    [ -n "$DET_MEM" ] || DET_MEM=$(awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo)
    NODE_CPUS=${LOCAL_SLURM_CPUS:-$DET_CPUS}
    NODE_MEM=${LOCAL_SLURM_MEM_MB:-$(( DET_MEM / NODES ))}
}

write_config() {
    local host; host=$(short_host)
    detect_node_resources
    local acct_lines
    if [ "$ACCOUNTING" = 1 ]; then
        acct_lines="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$DBD_PORT
# for the slurmdbd connection this names the munge socket
AccountingStoragePass=$MUNGE_SOCK
JobAcctGatherType=jobacct_gather/linux"
    else
        acct_lines="AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none"
    fi
    {
        cat <<EOF
# Written by local_slurm.sh; a throwaway test cluster on 127.0.0.1.
ClusterName=$CLUSTER
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MUNGE_SOCK,cred_expire=$CRED_EXPIRE
StateSaveLocation=$DIR/spool/slurmctld
SlurmdSpoolDir=$DIR/spool/slurmd-%n
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd-%n.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd-%n.log
PlugStackConfig=$DIR/etc/plugstack.conf
# no cgroups, no systemd: containers often have neither
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
$acct_lines
JobCompType=jobcomp/none
MpiDefault=none
MailProg=/bin/true
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1,sched_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
# slurmd reports the configured CPUs/memory, so virtual nodes may share this machine
SlurmdParameters=config_overrides
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=300
KillWait=5
Waittime=0
EOF
        local i=0 n
        for n in $(node_names); do
            i=$((i + 1))
            echo "NodeName=$n NodeHostname=$host NodeAddr=127.0.0.1 Port=$((PORT_BASE + 10 + i)) CPUs=$NODE_CPUS RealMemory=$NODE_MEM State=UNKNOWN"
        done
        echo "PartitionName=$PARTITION Nodes=$(node_list) Default=YES MaxTime=INFINITE State=UP"
    } > "$CONF"
    : > "$DIR/etc/plugstack.conf"
    if [ "$ACCOUNTING" = 1 ]; then
        cat > "$DIR/etc/slurmdbd.conf" <<EOF
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCK
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
PidFile=$DIR/run/slurmdbd.pid
LogFile=$LOGS/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF
        chmod 600 "$DIR/etc/slurmdbd.conf"
    fi
}

edit_hosts() {
    local n add=()
    for n in $(node_names); do
        local ip; ip=$(getent hosts "$n" | awk '{print $1; exit}') || true
        if [ -z "$ip" ]; then add+=("$n")
        elif [[ ! "$ip" =~ ^127\. ]] && [ "$ip" != ::1 ]; then
            log "warning: node name $n resolves to $ip, not loopback; jobs using it as MASTER_ADDR may fail"
        fi
    done
    [ "${#add[@]}" -eq 0 ] && return 0
    if [ "$EDIT_HOSTS" != 1 ]; then
        log "warning: node name(s) ${add[*]} do not resolve; code that connects to a node by name (MASTER_ADDR) will fail"
        return 0
    fi
    printf '127.0.0.1 %s %s\n' "${add[*]}" "$HOSTS_TAG" >> /etc/hosts || die "cannot add ${add[*]} to /etc/hosts"
    log "added to /etc/hosts: 127.0.0.1 ${add[*]}"
}

unedit_hosts() {
    grep -qF "$HOSTS_TAG" /etc/hosts 2>/dev/null || return 0
    local kept; kept=$(grep -vF "$HOSTS_TAG" /etc/hosts || true)
    # rewrite in place: /etc/hosts is often a bind mount that cannot be renamed over
    printf '%s\n' "$kept" > /etc/hosts
    log "removed our lines from /etc/hosts"
}

link_conf() {
    [ "$LINK_CONF" = 1 ] || return 0
    if [ ! -e "$SYS_CONF" ] && [ ! -L "$SYS_CONF" ]; then
        mkdir -p "$(dirname "$SYS_CONF")"
        ln -s "$CONF" "$SYS_CONF" && log "linked $SYS_CONF -> $CONF"
    elif [ "$(readlink "$SYS_CONF" 2>/dev/null)" != "$CONF" ]; then
        log "note: $SYS_CONF exists and is not ours; use SLURM_CONF=$CONF"
    fi
}

unlink_conf() {
    if [ -L "$SYS_CONF" ] && [ "$(readlink "$SYS_CONF")" = "$CONF" ]; then
        rm -f "$SYS_CONF"; log "removed link $SYS_CONF"
    fi
}

# -- subcommands ------------------------------------------------------------

cmd_up() {
    need_root up
    validate_settings
    if any_alive && [ -f "$DIR/settings" ] && [ "$(cat "$DIR/settings")" != "$(settings_string)" ]; then
        die "a cluster is running in $DIR with other settings ($(cat "$DIR/settings")); run: $0 down"
    fi
    if all_running; then
        if SLURM_CONF="$CONF" sinfo -h > /dev/null 2>&1; then
            log "already up: $(SLURM_CONF="$CONF" sinfo -h -o '%P %D %t %N' | paste -sd';' -)"
            echo "export SLURM_CONF=$CONF"
            return 0
        fi
    fi
    if any_pidfile; then log "found a partial or stale cluster; stopping it first"; stop_all; fi

    chmod 755 "$DIR"
    # fresh state each time: job ids, accounting and spool start from scratch
    rm -f "$DIR/settings" "$DIR/settings.env"
    rm -rf "${DIR:?}/run" "${DIR:?}/spool" "${DIR:?}/db" "${DIR:?}/munge" "${DIR:?}/etc" "${PIDS:?}"
    mkdir -p "$DIR/etc" "$DIR/run/munge" "$DIR/run/mysql" "$DIR/spool/slurmctld" "$DIR/munge" "$DIR/db" "$PIDS" "$LOGS"
    chmod 700 "$DIR/munge" "$DIR/db"
    rm -f "$LOGS"/*.log "$LOGS"/*.out
    local n; for n in $(node_names); do mkdir -p "$DIR/spool/slurmd-$n"; done

    # batch scripts are executed from the spool dir
    printf '#!/bin/sh\nexit 0\n' > "$DIR/spool/exec-test"; chmod 755 "$DIR/spool/exec-test"
    "$DIR/spool/exec-test" 2> /dev/null || die "$DIR is on a noexec filesystem; set LOCAL_SLURM_DIR elsewhere"
    rm -f "$DIR/spool/exec-test"

    install_packages

    local p; for p in "$CTLD_PORT" "$DBD_PORT" "$DB_PORT" $(seq $((PORT_BASE + 11)) $((PORT_BASE + 10 + NODES))); do
        port_in_use "$p" && die "port $p on 127.0.0.1 is in use; set LOCAL_SLURM_PORT_BASE to a free range"
    done

    DB_PASS=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
    write_config
    save_settings
    edit_hosts
    link_conf
    trap 'rc=$?; if [ $rc -ne 0 ]; then log "up failed; stopping what was started (logs kept in $LOGS)"; stop_all > /dev/null 2>&1 || true; fi' EXIT

    # munge: our own key and socket, independent of any system munged
    head -c 1024 /dev/urandom > "$DIR/munge/munge.key"; chmod 400 "$DIR/munge/munge.key"
    start_daemon munged munged --foreground --force --key-file="$DIR/munge/munge.key" \
        --socket="$MUNGE_SOCK" --pid-file="$DIR/run/munge/munged.pid" \
        --seed-file="$DIR/munge/munged.seed" --log-file="$LOGS/munged.log"
    wait_until "$WAIT_S" munged "munged up" bash -c "munge -S '$MUNGE_SOCK' -n | unmunge -S '$MUNGE_SOCK'" \
        || { show_log "$LOGS/munged.out"; die "munged did not come up"; }

    if [ "$ACCOUNTING" = 1 ]; then
        local mysqld; mysqld=$(command -v mariadbd || command -v mysqld)
        mariadb-install-db --no-defaults --user=root --datadir="$DIR/db/data" \
            --auth-root-authentication-method=socket --skip-test-db > "$LOGS/mariadb-install.out" 2>&1 \
            || { show_log "$LOGS/mariadb-install.out"; die "mariadb-install-db failed"; }
        start_daemon mariadbd "$mysqld" --no-defaults --user=root --datadir="$DIR/db/data" \
            --socket="$DB_SOCK" --port="$DB_PORT" --bind-address=127.0.0.1 --skip-name-resolve \
            --pid-file="$DIR/run/mysql/mysqld.pid" --log-error="$LOGS/mariadb.log" \
            --innodb-buffer-pool-size=64M --innodb-lock-wait-timeout=900 --innodb-log-file-size=64M
        wait_until "$WAIT_S" mariadbd "mariadbd up" mariadb-admin --no-defaults -S "$DB_SOCK" -uroot ping \
            || { show_log "$LOGS/mariadb.log" "$LOGS/mariadbd.out"; die "mariadbd did not come up"; }
        mariadb --no-defaults -S "$DB_SOCK" -uroot -e "
            CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
            CREATE USER 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
            GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
            GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';" \
            || die "could not create the slurm database user"
        start_daemon slurmdbd slurmdbd -D
        wait_until "$WAIT_S" slurmdbd "slurmdbd up" env SLURM_CONF="$CONF" sacctmgr -n -P list cluster \
            || { show_log "$LOGS/slurmdbd.log" "$LOGS/slurmdbd.out"; die "slurmdbd did not come up"; }
        SLURM_CONF="$CONF" sacctmgr -i add cluster "$CLUSTER" > /dev/null \
            || die "sacctmgr could not add cluster $CLUSTER"
    fi

    start_daemon slurmctld slurmctld -D -f "$CONF"
    wait_until "$WAIT_S" slurmctld "slurmctld up" bash -c "SLURM_CONF='$CONF' scontrol ping | grep -q UP" \
        || { show_log "$LOGS/slurmctld.log" "$LOGS/slurmctld.out"; die "slurmctld did not come up"; }

    for n in $(node_names); do
        start_daemon "slurmd-$n" slurmd -D -N "$n" -f "$CONF"
    done
    if ! wait_until "$WAIT_S" "slurmctld $(node_names | sed 's/^/slurmd-/' | paste -sd' ' -)" "all $NODES node(s) idle" bash -c \
        "[ \"\$(SLURM_CONF='$CONF' sinfo -h -N -t idle -o %N | sort -u | wc -l)\" -eq $NODES ]"; then
        SLURM_CONF="$CONF" sinfo -N -l >&2 || true
        for n in $(node_names); do show_log "$LOGS/slurmd-$n.log" "$LOGS/slurmd-$n.out"; done
        show_log "$LOGS/slurmctld.log"
        die "nodes did not become idle within ${WAIT_S}s"
    fi
    trap - EXIT
    log "cluster '$CLUSTER' up: partition $PARTITION, node(s) $(node_list), ${NODE_CPUS} CPUs and ${NODE_MEM} MB each, accounting=$ACCOUNTING"
    echo "export SLURM_CONF=$CONF"
}

stop_all() {
    if [ -f "$PIDS/slurmctld.pid" ] && pid_alive "$PIDS/slurmctld.pid"; then
        local jobs; jobs=$(SLURM_CONF="$CONF" timeout 10 squeue -h -o %A 2>/dev/null | paste -sd' ' -) || true
        if [ -n "$jobs" ]; then
            log "cancelling jobs: $jobs"
            SLURM_CONF="$CONF" timeout 10 scancel $jobs 2>/dev/null || true
            local i; for i in $(seq 1 75); do
                [ -z "$(SLURM_CONF="$CONF" timeout 10 squeue -h -o %A 2>/dev/null)" ] && break; sleep 0.2
            done
        fi
    fi
    local f
    for f in "$PIDS"/slurmd-*.pid; do [ -e "$f" ] && stop_pidfile "$f"; done
    local p; for p in $(our_stepds); do log "killing leftover slurmstepd $p"; kill -KILL "$p" 2>/dev/null || true; done
    for f in slurmctld slurmdbd mariadbd munged; do [ -e "$PIDS/$f.pid" ] && stop_pidfile "$PIDS/$f.pid"; done
    for f in "$PIDS"/*.pid; do [ -e "$f" ] && stop_pidfile "$f"; done
    unedit_hosts
    unlink_conf
    return 0
}

cmd_down() {
    need_root down
    load_settings
    if ! any_pidfile; then
        unedit_hosts; unlink_conf
        log "not running (no recorded daemons in $PIDS)"; return 0
    fi
    stop_all
    log "down"
}

cmd_status() {
    load_settings
    echo "state dir: $DIR"
    echo "config:    $CONF"
    if [ ! -f "$DIR/settings" ]; then echo "not set up (run: $0 up)"; return 3; fi
    echo "settings:  $(cat "$DIR/settings")"
    local ok=0 f any=0
    for f in "$PIDS"/*.pid; do
        [ -e "$f" ] || continue; any=1
        if pid_alive "$f"; then printf '  %-20s pid %-8s running\n' "$(basename "$f" .pid)" "$(pid_of "$f")"
        else printf '  %-20s pid %-8s DEAD\n' "$(basename "$f" .pid)" "$(pid_of "$f")"; ok=1; fi
    done
    if [ "$any" = 0 ]; then echo "down (no daemons recorded)"; return 3; fi
    if SLURM_CONF="$CONF" sinfo > /dev/null 2>&1; then
        SLURM_CONF="$CONF" sinfo
        SLURM_CONF="$CONF" squeue
    else
        echo "sinfo failed: slurmctld not answering (logs: $LOGS)"; ok=1
    fi
    echo "use: export SLURM_CONF=$CONF"
    return $ok
}

cmd_check() {
    load_settings
    export SLURM_CONF="$CONF"
    all_running || die "cluster not running; run: $0 up"
    local t; t=$(date +%s.%N)
    local n; n=$(wc -l <<< "$(node_names)")
    srun -N "$n" -n "$n" -t 1 printenv SLURMD_NODENAME | sort | sed 's/^/  srun on node: /'
    local out="$DIR/check-%j.out"
    local jid; jid=$(sbatch --parsable --wait -t 1 -o "$out" --wrap 'echo "batch job $SLURM_JOB_ID on $SLURMD_NODENAME"')
    sed 's/^/  sbatch: /' "$DIR/check-$jid.out"; rm -f "$DIR/check-$jid.out"
    if [ "$ACCOUNTING" = 1 ]; then
        sacct -n -X -j "$jid" -o JobID,State,ExitCode | sed 's/^/  sacct: /'
    fi
    log "check passed in $(since "$t")s"
}

cmd_purge() {
    need_root purge
    cmd_down
    if [ -d "$DIR" ]; then
        [ -f "$MARKER" ] || die "$DIR was not made by local_slurm.sh; not deleting it"
        rm -rf "$DIR"; log "deleted $DIR"
    fi
}

cmd_env() { echo "export SLURM_CONF=$CONF"; }

take_lock() {
    command -v flock > /dev/null || return 0
    exec 9> "$DIR/.lock"
    flock -w "$WAIT_S" 9 || die "another local_slurm.sh is working on $DIR (lock $DIR/.lock)"
}

main() {
    local cmd="${1:-}"
    case "$cmd" in
        up)
            need_root up
            validate_settings
            if [ -d "$DIR" ] && [ ! -f "$MARKER" ] && [ -n "$(ls -A "$DIR")" ]; then
                die "$DIR exists, is not empty and was not made by local_slurm.sh; choose another LOCAL_SLURM_DIR"
            fi
            mkdir -p "$DIR" && touch "$MARKER" || die "cannot create $DIR"
            take_lock; cmd_up ;;
        down|purge|check)
            [ "$cmd" = check ] || need_root "$cmd"
            if [ -f "$MARKER" ]; then take_lock; fi
            "cmd_$cmd" ;;
        status) cmd_status ;;
        env) cmd_env ;;
        -h|--help|help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' ;;
        *) echo "usage: $0 up|down|status|env|check|purge  (see --help)" >&2; exit 2 ;;
    esac
}

main "$@"
