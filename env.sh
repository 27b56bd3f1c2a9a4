# Source this in a shell to use the package from this checkout after `make setup` / `make test`:
#   . ./env.sh && dp-ros --help && bringup --config config/sim.yaml
# It activates .venv (ROS 2 Kilted wheels, torch, ...), applies the package's DDS profile, sources colcon's
# install/setup.bash, and puts the
# package's executables (install/diffusion_policy_ros/lib/diffusion_policy_ros, where ROS keeps them) on PATH.
_dp_root="$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")" && pwd)"
. "$_dp_root/.venv/bin/activate"
export AMENT_PREFIX_PATH="$VIRTUAL_ENV${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
export ROS_AUTOMATIC_DISCOVERY_RANGE="${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}"
# Fast DDS transports that deliver large camera frames whole (config/dds/fastdds.xml says why).
export FASTDDS_DEFAULT_PROFILES_FILE="${FASTDDS_DEFAULT_PROFILES_FILE:-$_dp_root/config/dds/fastdds.xml}"
export PYTHONUNBUFFERED=1
if [ -f "$_dp_root/install/setup.bash" ]; then
  . "$_dp_root/install/setup.bash"
  export PATH="$_dp_root/install/diffusion_policy_ros/lib/diffusion_policy_ros:$PATH"
fi
unset _dp_root
