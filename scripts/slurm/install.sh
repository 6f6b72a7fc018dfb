#!/usr/bin/env bash
# What the Slurm executor's tests and scripts/slurm/single_node.py need besides Python packages: Slurm's
# daemons and client commands, and munge, from the distribution's packages (Debian / Ubuntu: slurm-wlm,
# munge; about 46 MB, 20 s). Does nothing when they are already installed.
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"  # the daemons live there, outside a plain user's PATH
missing=()
for tool in munged slurmctld slurmd sbatch srun squeue scancel sinfo; do
  command -v "$tool" >/dev/null || missing+=("$tool")
done
[ "${#missing[@]}" -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null; then
  echo "error: ${missing[*]} not found, and no apt-get here: install Slurm (slurmctld, slurmd and its" \
       "client commands) and munge with this system's package manager" >&2
  exit 2
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq slurm-wlm munge >/dev/null
