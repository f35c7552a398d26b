#!/usr/bin/env bash
# Set up everything from nothing: .venv with pinned ROS 2 Jazzy wheels + torch/transformers,
# our interfaces built with rosidl and installed into the venv, the library installed editable.
# Idempotent: each step is skipped when its inputs did not change. Writes only inside the repo.
#   bash scripts/setup.sh          # then: source .venv/bin/activate
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV="$ROOT/.venv"
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
STAMPS="$VENV/.groma-stamps"
t0=$(date +%s)
say() { printf '[setup %3ss] %s\n' "$(( $(date +%s) - t0 ))" "$*"; }
stamp_ok() { [ -f "$STAMPS/$1" ] && [ "$(cat "$STAMPS/$1")" = "$2" ]; }
stamp_set() { mkdir -p "$STAMPS"; echo "$2" >"$STAMPS/$1"; }
hash_of() { cat "$@" 2>/dev/null | sha256sum | cut -c1-16; }

# 1. virtual environment
if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV with $($PY --version)"
  "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"

# 2. pinned dependencies (ROS 2 Jazzy wheels, build tools, torch CPU, transformers, ...)
req_hash=$(hash_of requirements/*.txt)
if ! stamp_ok pip "$req_hash"; then
  say "installing pinned requirements (ROS 2 Jazzy wheels, torch, transformers, ...)"
  mkdir -p build
  if ! "$VPY" -m pip install -q --disable-pip-version-check \
      -r requirements/ros-jazzy.txt -r requirements/python.txt -r requirements/dev.txt >build/pip.log 2>&1; then
    grep -v "^WARNING: Location" build/pip.log | tail -20
    echo "setup: installing the pinned requirements failed (log: build/pip.log)" >&2
    exit 1
  fi
  "$VPY" -c "import rclpy, torch, transformers, cv2, sentencepiece, scipy" \
    || { echo "setup: dependency install failed" >&2; exit 1; }
  rm -f "$STAMPS/fix" "$STAMPS/build"
  stamp_set pip "$req_hash"
fi

# 3. The wheels' exported CMake files carry the wheel builder's include paths
#    (/opt/python/cp311-cp311/...). Point them at this venv's Python and numpy headers.
if ! stamp_ok fix "$req_hash"; then
  say "fixing baked /opt/python include paths in the wheels' CMake exports"
  "$VPY" - "$VENV" <<'PYFIX'
import pathlib, re, sys, sysconfig
import numpy
venv = pathlib.Path(sys.argv[1])
py_inc = sysconfig.get_paths()["include"]
np_inc = numpy.get_include()
n = 0
for f in (venv / "share").glob("*/cmake/*.cmake"):
    text = f.read_text()
    if "/opt/python/" not in text:
        continue
    new = re.sub(r"/opt/python/cp3\d+-cp3\d+/lib/python3\.\d+/site-packages/numpy/_core/include", np_inc, text)
    new = re.sub(r"/opt/python/cp3\d+-cp3\d+/include/python3\.\d+", py_inc, new)
    if new != text:
        f.write_text(new)
        n += 1
print(f"  rewrote {n} files")
PYFIX
  stamp_set fix "$req_hash"
fi

# 4. Build our interfaces (msg/, action/) with rosidl and install them into the venv.
build_hash=$(hash_of "$STAMPS/pip" CMakeLists.txt package.xml msg/*.msg action/*.action)
if ! stamp_ok build "$build_hash" || ! "$VPY" -c "from groma_ros.msg import GroundedAnswer" 2>/dev/null; then
  say "building interfaces with rosidl (cmake)"
  rm -rf build/cmake; mkdir -p build
  export AMENT_PREFIX_PATH="$VENV" CMAKE_PREFIX_PATH="$VENV"
  cmake -S . -B build/cmake -DCMAKE_INSTALL_PREFIX="$VENV" -DPython3_EXECUTABLE="$VPY" \
    -DCMAKE_BUILD_TYPE=Release -DBUILD_TESTING=OFF -DGROMA_INSTALL_PYTHON_SOURCES=OFF \
    >build/cmake.log 2>&1 || { tail -40 build/cmake.log; exit 1; }
  cmake --build build/cmake -j "$(nproc)" >>build/cmake.log 2>&1 || { tail -40 build/cmake.log; exit 1; }
  cmake --install build/cmake >>build/cmake.log 2>&1 || { tail -40 build/cmake.log; exit 1; }
  stamp_set build "$build_hash"
fi

# 5. The library itself, editable ("compat" mode = a plain path entry for the checkout, so the
#    generated `groma_ros.msg` in site-packages and the checkout share one package via extend_path).
if ! "$VPY" -m pip show -q groma >/dev/null 2>&1; then
  say "installing the groma_ros library (editable) and its console scripts (groma, groma_node)"
  "$VPY" -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation \
    -e . --config-settings editable_mode=compat >build/pip-editable.log 2>&1 \
    || { tail -20 build/pip-editable.log; echo "setup: editable install failed" >&2; exit 1; }
fi

# 6. One activation file: the venv's own, extended with the ROS environment we need.
if ! grep -q "groma_ros environment" "$VENV/bin/activate"; then
  cat >>"$VENV/bin/activate" <<ACT

# --- groma_ros environment (added by scripts/setup.sh) ---
export AMENT_PREFIX_PATH="$VENV\${AMENT_PREFIX_PATH:+:\$AMENT_PREFIX_PATH}"
export RMW_IMPLEMENTATION=\${RMW_IMPLEMENTATION:-rmw_fastrtps_cpp}
# Keep DDS discovery on this machine unless the user chose otherwise.
export ROS_AUTOMATIC_DISCOVERY_RANGE=\${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}
export ROS_DOMAIN_ID=\${ROS_DOMAIN_ID:-42}
# Never reach a model hub: weights come from local directories.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
ACT
fi

# 7. Smoke test: generated messages, the library and rclpy import together.
"$VPY" -c "
from groma_ros.msg import GroundedAnswer
from groma_ros.action import Ground
import groma_ros.engine.types, rclpy, torch
print('  smoke test ok: groma_ros.msg, groma_ros.action, groma_ros.engine, rclpy, torch', torch.__version__)
"
say "done; venv size $(du -sh "$VENV" | cut -f1). Activate with: source .venv/bin/activate"
