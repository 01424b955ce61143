#!/usr/bin/env bash
# Install bgl into the active Python environment: `./install.sh` for use, `./install.sh test` for
# the test suite too. Every pip call goes through constraints.txt, which pins torch and
# torchvision as a pair (the CPU-runnable build on CPU-only machines, the matching CUDA build on
# GPU boxes), so a package that declares torchvision or torch can never replace them.
set -euo pipefail
cd "$(dirname "$0")"
extra=""
[ "${1:-}" = "test" ] && extra="[test]"
# One resolver run for bgl and LPIPS (the metric itself, with its linear layers), so that every
# declared dependency is satisfied together.
pip install -c constraints.txt -e ".${extra}" lpips==0.1.4
# packages that only ship model files the metrics read (BRISQUE SVR, LIVE's NIQE pristine
# parameters): their declared dependencies are not needed, so none are installed
pip install -c constraints.txt --no-deps brisque==0.2.0
pip install -c constraints.txt --no-deps --no-build-isolation basicsr==1.4.2
if [ -n "$extra" ]; then
  # an independent reference implementation the metric tests compare against
  pip install -c constraints.txt --no-deps piq==0.8.0
  # BOAT, the peer bilevel toolbox `bgl bench boat` and its tests compare against, with its
  # declared dependencies but one: it caps numpy at 1.26.4, and bgl's stack needs NumPy 2
  # (pyarrow 26 refuses to import beside 1.26). `higher` is imported by BOAT, not declared.
  pip install -c constraints.txt --no-deps boat-torch==1.1.1
  python -c '
import importlib.metadata, re
for req in importlib.metadata.requires("boat-torch") or []:
    if re.split(r"[\s<>=!~;\[(]", req, maxsplit=1)[0].lower() != "numpy":
        print(req)
' | tr '\n' '\0' | xargs -0 pip install -c constraints.txt higher==0.2.1
fi
# A package's dependencies could still have moved torch or torchvision: fail loudly unless the
# environment holds exactly the pinned pair.
python - <<'PY'
import pathlib
import re
import subprocess
import sys

pins = dict(re.findall(r"^(torch|torchvision)==(\S+)", pathlib.Path("constraints.txt").read_text(),
                       re.M))
listed = subprocess.run([sys.executable, "-m", "pip", "list", "--format=freeze"],
                        capture_output=True, text=True, check=True).stdout
found = dict(re.findall(r"^(torch|torchvision)==(\S+)", listed, re.M))
bad = [f"{name}: pinned {want}, installed {found.get(name, 'nothing')}"
       for name, want in pins.items() if found.get(name, "").split("+")[0] != want]
if len(pins) != 2 or bad:
    sys.exit("install.sh: torch/torchvision are not the pinned pair from constraints.txt:\n  "
             + "\n  ".join(bad or ["constraints.txt must pin torch and torchvision"]))
import torch
import torchvision

print("bgl installed with torch", torch.__version__, "and torchvision", torchvision.__version__)
PY
