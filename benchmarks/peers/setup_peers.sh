#!/usr/bin/env bash
# Create the virtual environments of the public Cannon implementations that
# benchmarks/bench_core.py compares against. Idempotent: a venv whose peer
# already imports is left alone.
#
#   bash benchmarks/peers/setup_peers.sh            # both peers
#   PEERS_DIR=/elsewhere bash benchmarks/peers/setup_peers.sh
#
# Two venvs, because both peers are "The Cannon" (import names `TheCannon`
# and `thecannon`, distinguishable only by case) and annieslasso needs an
# older numpy (< 2.4) than the rest of the project:
#   $PEERS_DIR/thecannon    -> thecannon==0.7.3    (A. Ho; import TheCannon)
#   $PEERS_DIR/annieslasso  -> annieslasso==0.2.96 (A. Casey; import thecannon)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
PEERS_DIR="${PEERS_DIR:-$repo/.peers}"
PYTHON="${PYTHON:-python3}"
export MPLBACKEND=Agg          # TheCannon imports pyplot at import time
export PIP_DISABLE_PIP_VERSION_CHECK=1

make_venv() {  # name import_check pip-args...
    local name="$1" check="$2"; shift 2
    local venv="$PEERS_DIR/$name"
    if [[ -x "$venv/bin/python" ]] && "$venv/bin/python" -c "$check" >/dev/null 2>&1; then
        echo "[setup_peers] $name: present ($venv)"
        return 0
    fi
    echo "[setup_peers] $name: creating $venv"
    rm -rf "$venv"
    "$PYTHON" -m venv "$venv"
    "$venv/bin/python" -m pip install -q --upgrade pip setuptools wheel
    "$venv/bin/python" -m pip install -q "$@"
    "$venv/bin/python" -c "$check"
    echo "[setup_peers] $name: ok"
}

mkdir -p "$PEERS_DIR"
make_venv thecannon \
    "import TheCannon, numpy, scipy, astropy, matplotlib" \
    "thecannon==0.7.3" numpy scipy matplotlib astropy
make_venv annieslasso \
    "import thecannon; assert thecannon.__version__ == '0.2.96'" \
    "annieslasso==0.2.96" "numpy<2.4" scipy six
echo "[setup_peers] done: $PEERS_DIR"
