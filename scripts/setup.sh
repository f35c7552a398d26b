#!/usr/bin/env bash
# Set up everything from nothing: .venv with pinned ROS 2 Jazzy wheels + torch/transformers,
# our interfaces built with rosidl and installed into the venv, the library installed editable.
# Idempotent: each step is skipped when its inputs did not change. Writes only inside the repo (and, for the
# ROS 2 tools of shared/ros_tools, a build folder under ${TMPDIR:-/tmp}).
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
  rm -f "$STAMPS/fix" "$STAMPS/build" "$STAMPS/rostools"
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

# 6. The ROS 2 launch system and `ros2` CLI (launch, launch_ros, ros2cli + verbs): on no registry we reach, so
#    they come as upstream wheels in shared/ros_tools, which CI lays out inside the checkout or beside it
#    (GROMA_ROS_TOOLS names another folder). Without it the tests that need the tools skip, naming what is missing.
ros_tools=${GROMA_ROS_TOOLS:-}
if [ -z "$ros_tools" ]; then
  for candidate in "$ROOT/shared/ros_tools" "$ROOT/../shared/ros_tools"; do
    if [ -f "$candidate/install.sh" ]; then ros_tools=$(cd "$candidate" && pwd); break; fi
  done
fi
if [ -n "$ros_tools" ]; then
  tools_hash=$( (echo "$req_hash"; cd "$ros_tools" && ls wheels src 2>/dev/null; cat install.sh) | sha256sum | cut -c1-16)
  if ! stamp_ok rostools "$tools_hash" || [ ! -x "$VENV/bin/ros2" ]; then
    say "installing the ROS 2 launch + ros2 CLI tools from $ros_tools"
    mkdir -p build
    bash "$ros_tools/install.sh" "$VENV" >build/ros_tools.log 2>&1 \
      || { tail -20 build/ros_tools.log; echo "setup: installing $ros_tools failed (log: build/ros_tools.log)" >&2; exit 1; }
    stamp_set rostools "$tools_hash"
  fi
elif "$VPY" -c "import launch_ros, ros2cli" 2>/dev/null && command -v ros2 >/dev/null; then
  say "ROS 2 launch + ros2 CLI: using the ones already installed ($(command -v ros2))"
else
  say "no shared/ros_tools in or beside the checkout: tests of ros2 launch / the ros2 CLI will skip"
fi

# 7. The venv as an installed ROS package: `ros2 run groma_ros groma_node` and `ros2 launch groma_ros ...`.
#    The interfaces' build (step 4) installs share/groma_ros but not the node (the library is the editable
#    checkout); launch files and config are copied from the checkout on every run.
mkdir -p "$VENV/lib/groma_ros" "$VENV/share/groma_ros/launch" "$VENV/share/groma_ros/config"
printf '#!%s\nimport sys\n\nfrom groma_ros.ros.node import main\n\nsys.exit(main())\n' "$VPY" \
  >"$VENV/lib/groma_ros/groma_node"
chmod +x "$VENV/lib/groma_ros/groma_node"
cp launch/*.launch.py "$VENV/share/groma_ros/launch/"
cp config/*.yaml "$VENV/share/groma_ros/config/"

# 8. One activation file: the venv's own, extended with the ROS environment (scripts/venv_env.sh). It leaves
#    ROS_DOMAIN_ID and the discovery range alone. Replaces the block an earlier set-up wrote.
"$VPY" - "$VENV/bin/activate" "$(sed "s|@VENV@|$VENV|g" scripts/venv_env.sh)" <<'PYACT'
import pathlib, sys
path, block = pathlib.Path(sys.argv[1]), sys.argv[2].strip("\n")
begin, end = "# --- groma_ros environment (added by scripts/setup.sh) ---", "# --- end of groma_ros environment ---"
text = path.read_text()
head, found, rest = text.partition(begin)
tail = rest.partition(end)[2] if found and end in rest else ""  # a block without an end marker ran to the file's end
new = f"{head.rstrip()}\n\n{begin}\n{block}\n{end}\n{tail.lstrip()}"
if new != text:
    path.write_text(new)
PYACT

# 9. Smoke test: generated messages, the library and rclpy import together.
"$VPY" -c "
from groma_ros.msg import GroundedAnswer
from groma_ros.action import Ground
import groma_ros.engine.types, rclpy, torch
print('  smoke test ok: groma_ros.msg, groma_ros.action, groma_ros.engine, rclpy, torch', torch.__version__)
"
say "done; venv size $(du -sh "$VENV/" | cut -f1). Activate with: source .venv/bin/activate"
