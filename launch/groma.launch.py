"""Launch one Groma node for one camera (real ROS 2 installs: `ros2 launch groma_ros groma.launch.py`).

Arguments: namespace, image/camera_info/depth topics, params_file, model_path, device, use_depth,
target_frame, autostart. With autostart:=false the launch file itself drives the lifecycle
(configure, then activate once configured), so no external lifecycle manager is needed.
"""

from launch.actions import DeclareLaunchArgument, EmitEvent, RegisterEventHandler
from launch.conditions import UnlessCondition
from launch.events import matches_action
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution, PythonExpression
from launch_ros.actions import LifecycleNode
from launch_ros.event_handlers import OnStateTransition
from launch_ros.events.lifecycle import ChangeState
from launch_ros.substitutions import FindPackageShare
from lifecycle_msgs.msg import Transition

from launch import LaunchDescription

ARGUMENTS = [
    ("namespace", "", "Namespace of this camera's Groma node (one node per camera)."),
    ("node_name", "groma", "Node name; topics are ~/query, ~/answer, ..."),
    ("image_topic", "/camera/color/image_raw", "Camera image (raw)."),
    ("compressed_image_topic", "/camera/color/image_raw/compressed", "Camera image (compressed)."),
    ("camera_info_topic", "/camera/color/camera_info", "Camera info of the colour camera."),
    ("depth_topic", "/camera/aligned_depth_to_color/image_raw", "Registered depth image (16UC1 mm / 32FC1 m)."),
    ("depth_info_topic", "/camera/aligned_depth_to_color/camera_info", "Camera info of the depth image."),
    ("params_file", "", "Parameter YAML; empty = the package's config/groma.yaml."),
    ("model_path", "", "Groma checkpoint directory; empty = embedded default model."),
    ("device", "cpu", "torch device (cpu, cuda, cuda:0)."),
    ("image_transport", "raw", "raw or compressed."),
    ("use_depth", "false", "Lift detections to 3-D with depth."),
    ("target_frame", "", "Frame for 3-D outputs (needs tf2_ros); empty = camera optical frame."),
    ("autostart", "true", "Node configures+activates itself; false = this launch file does it."),
]


def generate_launch_description() -> LaunchDescription:
    args = [DeclareLaunchArgument(name, default_value=default, description=text)
            for name, default, text in ARGUMENTS]
    default_params = PathJoinSubstitution([FindPackageShare("groma_ros"), "config", "groma.yaml"])
    params_file = PythonExpression([
        "'", LaunchConfiguration("params_file"), "' or '", default_params, "'"])
    node = LifecycleNode(
        package="groma_ros",
        executable="groma_node",
        name=LaunchConfiguration("node_name"),
        namespace=LaunchConfiguration("namespace"),
        output="screen",
        parameters=[params_file, {
            "model.path": LaunchConfiguration("model_path"),
            "model.device": LaunchConfiguration("device"),
            "image_transport": LaunchConfiguration("image_transport"),
            "use_depth": LaunchConfiguration("use_depth"),
            "target_frame": LaunchConfiguration("target_frame"),
            "autostart": LaunchConfiguration("autostart"),
        }],
        remappings=[
            ("image", LaunchConfiguration("image_topic")),
            ("image/compressed", LaunchConfiguration("compressed_image_topic")),
            ("camera_info", LaunchConfiguration("camera_info_topic")),
            ("depth/image", LaunchConfiguration("depth_topic")),
            ("depth/camera_info", LaunchConfiguration("depth_info_topic")),
        ],
    )
    manual = UnlessCondition(LaunchConfiguration("autostart"))
    configure = EmitEvent(event=ChangeState(lifecycle_node_matcher=matches_action(node),
                                            transition_id=Transition.TRANSITION_CONFIGURE), condition=manual)
    activate_when_configured = RegisterEventHandler(OnStateTransition(
        target_lifecycle_node=node, start_state="configuring", goal_state="inactive",
        entities=[EmitEvent(event=ChangeState(lifecycle_node_matcher=matches_action(node),
                                              transition_id=Transition.TRANSITION_ACTIVATE))]),
        condition=manual)
    return LaunchDescription([*args, node, activate_when_configured, configure])
