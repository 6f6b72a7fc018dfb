#!/usr/bin/env python3
"""A single-node Slurm cluster on this machine, for trying `--executor slurm` and for the tests.

    python scripts/slurm/single_node.py start [--dir DIR]   # prints the `export SLURM_CONF=...` to use
    python scripts/slurm/single_node.py stop [--dir DIR]

It needs Debian's `slurm-wlm` and `munge` (`bash scripts/slurm/install.sh`) and no systemd: munged,
slurmctld and slurmd run in the foreground of their own sessions, everything they keep (keys, sockets,
state, spool, logs) lives under DIR (default /tmp/titans-bench-slurm), on ports picked free, so the
machine's own Slurm or munge, if any, is left alone. Accounting is off: the executor does not need it.
Stopping cancels every job first and waits for the queue to empty (a job step outlives a killed slurmd),
then ends the three daemons by the PIDs recorded at start. Standard library only.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_DIR = Path("/tmp/titans-bench-slurm")
DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "srun", "squeue", "scancel", "sinfo")
PARTITION = "debug"


class ClusterError(RuntimeError):
    pass


def _which(tool: str) -> str | None:
    """Slurm's and munge's daemons live in /usr/sbin, outside a plain user's PATH."""
    return shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin")


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _node_resources() -> tuple[int, int]:
    """CPUs and memory (MiB) as slurmd itself counts them: a node declaring more is never used."""
    out = subprocess.run([_which("slurmd") or "slurmd", "-C"], capture_output=True, text=True).stdout
    fields = dict(f.split("=", 1) for f in out.split() if "=" in f)
    cpus = int(fields.get("CPUs", os.cpu_count() or 1))
    memory = int(fields.get("RealMemory", 1024))
    return cpus, memory


def slurm_conf(
    directory: Path, socket_path: Path, node: str, ports: list[int], cpus: int, memory_mib: int
) -> str:
    user = getpass.getuser()
    return f"""\
# A single-node cluster for titans-bench's tests (scripts/slurm/single_node.py). Addresses are
# loopback, so the machine's name need not resolve.
ClusterName=titans-bench
SlurmctldHost={node}(127.0.0.1)
SlurmUser={user}
SlurmdUser={user}
SlurmctldPort={ports[0]}
SlurmdPort={ports[1]}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={socket_path}
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
ReturnToService=2
SlurmctldPidFile={directory}/slurmctld.pid
SlurmdPidFile={directory}/slurmd.pid
SlurmdSpoolDir={directory}/spool
StateSaveLocation={directory}/state
SlurmctldLogFile={directory}/log/slurmctld.log
SlurmdLogFile={directory}/log/slurmd.log
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
# Without accounting, squeue is what remembers how a job ended: keep finished jobs for an hour.
MinJobAge=3600
# Cancelled and timed-out jobs are killed 5 s after their SIGTERM (default 30), so tests stay short.
KillWait=5
NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mib} State=UNKNOWN
PartitionName={PARTITION} Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""


def _env(directory: Path) -> dict[str, str]:
    return {**os.environ, "SLURM_CONF": str(directory / "slurm.conf")}


def _spawn(argv: list[str], directory: Path, log_name: str) -> int:
    log = open(directory / "log" / log_name, "ab")
    proc = subprocess.Popen(
        [_which(argv[0]) or argv[0], *argv[1:]],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
        env=_env(directory),
        start_new_session=True,
    )
    log.close()
    return proc.pid


def _wait(what: str, ready, timeout_s: float, directory: Path, pids: dict) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready():
        dead = [name for name, pid in pids.items() if not _alive(pid)]
        if dead:
            log = directory / "log" / f"{dead[0]}.out"
            last = log.read_text(errors="replace").strip().splitlines()[-1:] if log.exists() else []
            raise ClusterError(f"{dead[0]} exited: {last[0] if last else 'no output'} (logs in {log.parent})")
        if time.monotonic() > deadline:
            raise ClusterError(f"{what} not ready after {timeout_s:g} s; see the logs in {directory / 'log'}")
        time.sleep(0.1)


def _node_state(directory: Path) -> str:
    proc = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, env=_env(directory))
    return proc.stdout.strip()


def start(directory: Path = DEFAULT_DIR, timeout_s: float = 60.0) -> dict:
    """Start munged, slurmctld and slurmd with fresh state under ``directory``; return when the node is
    idle. Returns what was started: the config path, the PIDs and the seconds it took."""
    missing = [tool for tool in (*DAEMONS, *CLIENTS) if _which(tool) is None]
    if missing:
        raise ClusterError(
            f"{', '.join(missing)} not found: install Slurm and munge first (bash scripts/slurm/install.sh)"
        )
    directory = Path(directory).resolve()
    if (directory / "pids.json").exists():
        raise ClusterError(f"a cluster already runs from {directory}: stop it first (stop --dir {directory})")
    began = time.monotonic()
    shutil.rmtree(directory, ignore_errors=True)  # fresh state: no job of an earlier run comes back
    for sub, mode in (("", 0o755), ("munge", 0o700), ("state", 0o700), ("spool", 0o755), ("log", 0o755)):
        path = directory / sub
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(mode)  # munged refuses a key others can read
    # munged also refuses a socket in a directory that not everyone can enter, up to the root (a pytest
    # temporary directory is private): the socket gets a directory of its own under the system's /tmp.
    socket_dir = Path(tempfile.mkdtemp(prefix="titans-bench-munge-"))
    socket_dir.chmod(0o755)
    (directory / "socket-dir").write_text(str(socket_dir))
    socket_path = socket_dir / "munge.socket"
    key = directory / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o600)
    node = socket.gethostname().split(".")[0]  # Slurm's node name must be `hostname -s`
    cpus, memory = _node_resources()
    conf = directory / "slurm.conf"
    conf.write_text(slurm_conf(directory, socket_path, node, _free_ports(2), cpus, memory))

    try:
        pids = _start_daemons(directory, conf, key, socket_dir, timeout_s)
    except BaseException:
        if (directory / "pids.json").exists():
            stop(directory)  # nothing half-started is left running
        raise
    return {"conf": str(conf), "pids": pids, "node": node, "cpus": cpus, "seconds": time.monotonic() - began}


def _start_daemons(directory: Path, conf: Path, key: Path, socket_dir: Path, timeout_s: float) -> dict:
    socket_path = socket_dir / "munge.socket"
    pids = {}
    pids["munged"] = _spawn(
        ["munged", "--foreground", f"--socket={socket_path}", f"--key-file={key}",
         f"--pid-file={socket_dir}/munged.pid", f"--log-file={directory}/log/munged.log",
         f"--seed-file={directory}/munge/munged.seed"],
        directory, "munged.out",
    )  # fmt: skip
    (directory / "pids.json").write_text(json.dumps(pids))
    _wait("munged", socket_path.exists, timeout_s, directory, pids)
    # -c: start with no jobs at all, whatever the state directory holds.
    pids["slurmctld"] = _spawn(["slurmctld", "-D", "-c", "-f", str(conf)], directory, "slurmctld.out")
    (directory / "pids.json").write_text(json.dumps(pids))
    pids["slurmd"] = _spawn(["slurmd", "-D", "-f", str(conf)], directory, "slurmd.out")
    (directory / "pids.json").write_text(json.dumps(pids))
    _wait("the node", lambda: _node_state(directory) == "idle", timeout_s, directory, pids)
    return pids


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _queue(directory: Path) -> list[str]:
    proc = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True, env=_env(directory))
    return proc.stdout.split() if proc.returncode == 0 else []


def stop(directory: Path = DEFAULT_DIR, timeout_s: float = 60.0) -> list[str]:
    """Cancel every job, wait for the queue to empty, then end the daemons by PID. Returns the jobs that
    were still in the queue when it gave up waiting (none, normally)."""
    directory = Path(directory).resolve()
    pid_file = directory / "pids.json"
    if not pid_file.exists():
        raise ClusterError(f"no cluster runs from {directory} (no pids.json)")
    pids = json.loads(pid_file.read_text())
    left = []
    if _alive(pids.get("slurmctld", -1)):
        subprocess.run(["scancel", "--full", "--quiet", f"--user={getpass.getuser()}"], env=_env(directory))
        deadline = time.monotonic() + timeout_s
        while (left := _queue(directory)) and time.monotonic() < deadline:
            time.sleep(0.2)
    for name in reversed(DAEMONS):
        pid = pids.get(name)
        if pid is None or not _alive(pid):
            continue
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
    for pid in pids.values():
        try:  # reap our own children (the fixture's case); the script's daemons are reaped by init
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
    pid_file.unlink()
    socket_dir = directory / "socket-dir"
    if socket_dir.exists():
        shutil.rmtree(socket_dir.read_text().strip(), ignore_errors=True)
        socket_dir.unlink()
    return left


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["start", "stop"])
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, help=f"state directory ({DEFAULT_DIR})")
    args = parser.parse_args(argv)
    try:
        if args.action == "start":
            info = start(args.dir)
            up = f"node {info['node']}, {info['cpus']} CPUs, partition {PARTITION}"
            print(f"single-node Slurm up in {info['seconds']:.1f} s: {up}", file=sys.stderr)
            print(f"export SLURM_CONF={info['conf']}")
        else:
            left = stop(args.dir)
            if left:
                print(f"error: jobs still in the queue after scancel: {' '.join(left)}", file=sys.stderr)
                return 1
            print("stopped", file=sys.stderr)
    except ClusterError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
