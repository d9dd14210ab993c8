#!/bin/sh
# make_fixtures.sh — regenerates every reference fixture in tests/fixtures by running each
# tools/reference/*_reference.py (PyTorch, CPU, float64). Run from anywhere.
set -eu
# The first of $PYTHON, python3, /usr/bin/python3 that imports torch (a pyenv shim may
# shadow Debian's python3, which is the one with python3-torch).
pick_python() {
    for py in ${PYTHON:-} python3 /usr/bin/python3; do
        if command -v "$py" >/dev/null 2>&1 && "$py" -c "import torch, numpy" >/dev/null 2>&1; then
            echo "$py"; return 0
        fi
    done
    echo "make_fixtures.sh: no python3 with torch and numpy (apt-get install python3-torch python3-numpy)" >&2
    return 1
}
python=$(pick_python)
here=$(cd "$(dirname "$0")" && pwd)
cd "$here/../.."
mkdir -p tests/fixtures
for script in "$here"/*_reference.py; do
    [ -e "$script" ] || continue
    echo "== $(basename "$script")"
    "$python" "$script"
done
