#!/usr/bin/env bash
# Install bgl into the active Python environment: `./install.sh` for use, `./install.sh test` for
# the test suite too. torch is pinned by constraints.txt (the CPU build on CPU-only machines, the
# matching CUDA build on GPU boxes). A few packages are installed without their dependencies
# because they declare torchvision (which would replace torch) or only ship data bgl reads.
set -euo pipefail
cd "$(dirname "$0")"
extra=""
[ "${1:-}" = "test" ] && extra="[test]"
pip install -c constraints.txt -e ".${extra}"
# metric model files: LPIPS linear layers, BRISQUE SVR, LIVE's NIQE pristine parameters
pip install -c constraints.txt --no-deps lpips==0.1.4 brisque==0.2.0
pip install -c constraints.txt --no-deps --no-build-isolation basicsr==1.4.2
if [ -n "$extra" ]; then
  # independent reference implementations the metric tests compare against
  pip install -c constraints.txt --no-deps piq==0.8.0
  # BOAT, the peer bilevel toolbox `bgl bench boat` and its tests compare against (it declares
  # torchvision, which would replace torch: no dependencies; it needs only torch, higher, matplotlib)
  pip install -c constraints.txt --no-deps boat-torch==1.1.1 higher==0.2.1
fi
python -c "import torch; print('bgl installed with torch', torch.__version__)"
