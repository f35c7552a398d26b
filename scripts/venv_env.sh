# groma_ros environment, appended to .venv/bin/activate by scripts/setup.sh (with the venv's path filled in).
# ROS 2 comes from the venv's wheels. DDS settings (ROS_DOMAIN_ID, ROS_AUTOMATIC_DISCOVERY_RANGE, ROS_STATIC_PEERS)
# stay as the shell has them: the node must see the robot's cameras on the robot's domain and network. The tests,
# `make demo` and CI choose their own private domain on loopback.
case ":${AMENT_PREFIX_PATH:-}:" in
  *":@VENV@:"*) ;;
  *) export AMENT_PREFIX_PATH="@VENV@${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}" ;;
esac
export RMW_IMPLEMENTATION=${RMW_IMPLEMENTATION:-rmw_fastrtps_cpp}
# Never reach a model hub: weights come from local directories.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
