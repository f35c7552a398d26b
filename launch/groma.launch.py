"""Launch one Groma node: `ros2 launch groma_ros groma.launch.py image_topic:=/camera/color/image_raw`.

Parameters come from `params_file` (default: the package's config/groma.yaml). A launch argument that sets a
parameter (model_path, device, image_transport, use_depth, target_frame, use_sim_time, autostart, cameras)
overrides the file only when it is given: `params_file:=robot.yaml` with `model.path: /models/groma-7b` in it runs
that model, and `model_path:=/models/other` on top of it runs the other one.

With autostart:=false the launch file drives the lifecycle itself (configure, then activate once configured), so
no external lifecycle manager is needed. Leave autostart out and set `autostart: false` in the params file to
hand the node to a lifecycle manager instead.
"""

from launch.actions import DeclareLaunchArgument, EmitEvent, OpaqueFunction, RegisterEventHandler
from launch.events import matches_action
from launch.substitutions import PathJoinSubstitution, TextSubstitution
from launch_ros.actions import LifecycleNode
from launch_ros.event_handlers import OnStateTransition
from launch_ros.events.lifecycle import ChangeState
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare
from lifecycle_msgs.msg import Transition

from launch import LaunchDescription

ARGUMENTS = [
    ("namespace", "", "Namespace of the Groma node."),
    ("node_name", "groma", "Node name; topics are ~/query, ~/answer, ..."),
    ("image_topic", "/camera/color/image_raw", "Camera image (raw)."),
    ("compressed_image_topic", "/camera/color/image_raw/compressed", "Camera image (compressed)."),
    ("camera_info_topic", "/camera/color/camera_info", "Camera info of the colour camera."),
    ("depth_topic", "/camera/aligned_depth_to_color/image_raw", "Registered depth image (16UC1 mm / 32FC1 m)."),
    ("depth_info_topic", "/camera/aligned_depth_to_color/camera_info", "Camera info of the depth image."),
    ("params_file", "", "Parameter YAML; empty = the package's config/groma.yaml."),
    ("model_path", "", "Parameter model.path: Groma checkpoint directory; empty = embedded default model."),
    ("device", "cpu", "Parameter model.device: torch device (cpu, cuda, cuda:0)."),
    ("image_transport", "raw", "Parameter image_transport: raw or compressed."),
    ("use_depth", "false", "Parameter use_depth: lift detections to 3-D with depth."),
    ("target_frame", "", "Parameter target_frame: frame for 3-D outputs (needs tf2_ros); empty = camera frame."),
    ("use_sim_time", "false", "Parameter use_sim_time: the node's clock follows /clock (bag replay, simulators)."),
    ("autostart", "true", "Parameter autostart: the node configures+activates itself; false = this launch file "
                          "drives configure -> activate."),
    ("cameras", "[]", "Parameter cameras: YAML list of camera names, e.g. [front, wrist]; [] = one unnamed camera."),
]

# Launch argument -> (node parameter, kind). Passed to the node only when the argument is given.
PARAMETER_ARGUMENTS = {
    "model_path": ("model.path", "str"),
    "device": ("model.device", "str"),
    "image_transport": ("image_transport", "str"),
    "use_depth": ("use_depth", "bool"),
    "target_frame": ("target_frame", "str"),
    "use_sim_time": ("use_sim_time", "bool"),
    "autostart": ("autostart", "bool"),
    "cameras": ("cameras", "yaml"),  # a YAML list, parsed by launch_ros
}
_NOTE = " Not given: the params file's value (shown default: the node's)."


def _as_bool(name: str, text: str) -> bool:
    value = text.strip().lower()
    if value in ("true", "1"):
        return True
    if value in ("false", "0"):
        return False
    raise ValueError(f"launch argument {name}:={text!r} must be true or false")


def _parameter_value(name: str, text: str):
    kind = PARAMETER_ARGUMENTS[name][1]
    if kind == "bool":
        return _as_bool(name, text)
    if kind == "str":
        return ParameterValue(text, value_type=str)
    return TextSubstitution(text=text)  # launch_ros reads a substitution's text as YAML


def generate_launch_description() -> LaunchDescription:
    given: dict[str, str] = {}
    declared = [name for name, _, _ in ARGUMENTS]

    def remember_given(context):
        """Runs before the declarations below fill in their defaults: what is set now was given by the user."""
        given.clear()
        given.update({name: context.launch_configurations[name] for name in declared
                      if name in context.launch_configurations})
        return []

    def launch_node(context):
        config = context.launch_configurations
        value = {name: config[name] for name in declared}
        # The defaults were only needed here: drop them so a launch file that includes this one twice does not
        # hand the first inclusion's defaults to the second as if they had been given.
        for name in declared:
            if name not in given:
                del config[name]
        params_file = value["params_file"] or PathJoinSubstitution(
            [FindPackageShare("groma_ros"), "config", "groma.yaml"])
        overrides = {param: _parameter_value(arg, given[arg])
                     for arg, (param, _) in PARAMETER_ARGUMENTS.items() if arg in given}
        node = LifecycleNode(
            package="groma_ros",
            executable="groma_node",
            name=value["node_name"],
            namespace=value["namespace"],
            output="screen",
            parameters=[params_file, overrides] if overrides else [params_file],
            remappings=[
                ("image", value["image_topic"]),
                ("image/compressed", value["compressed_image_topic"]),
                ("camera_info", value["camera_info_topic"]),
                ("depth/image", value["depth_topic"]),
                ("depth/camera_info", value["depth_info_topic"]),
            ],
        )
        if "autostart" not in given or _as_bool("autostart", given["autostart"]):
            return [node]

        def change_state(transition: int) -> EmitEvent:
            return EmitEvent(event=ChangeState(lifecycle_node_matcher=matches_action(node), transition_id=transition))

        activate_when_configured = RegisterEventHandler(OnStateTransition(
            target_lifecycle_node=node, start_state="configuring", goal_state="inactive",
            entities=[change_state(Transition.TRANSITION_ACTIVATE)]))
        return [activate_when_configured, node, change_state(Transition.TRANSITION_CONFIGURE)]

    declarations = [
        DeclareLaunchArgument(name, default_value=default,
                              description=text + (_NOTE if name in PARAMETER_ARGUMENTS else ""))
        for name, default, text in ARGUMENTS]
    return LaunchDescription([OpaqueFunction(function=remember_given), *declarations,
                              OpaqueFunction(function=launch_node)])
