"""Two cameras, two Groma nodes (one per camera namespace), one shared parameter file.

`ros2 launch groma_ros two_cameras.launch.py` → /front/groma/... and /wrist/groma/...
Each node loads its own copy of the model: on one GPU, prefer one node per camera only when memory allows.
"""

from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.substitutions import FindPackageShare

from launch import LaunchDescription

CAMERAS = {
    "front": "/front_camera/color",
    "wrist": "/wrist_camera/color",
}


def generate_launch_description() -> LaunchDescription:
    groma = PathJoinSubstitution([FindPackageShare("groma_ros"), "launch", "groma.launch.py"])
    entities = [DeclareLaunchArgument("model_path", default_value=""),
                DeclareLaunchArgument("device", default_value="cpu")]
    for namespace, prefix in CAMERAS.items():
        entities.append(IncludeLaunchDescription(
            PythonLaunchDescriptionSource(groma),
            launch_arguments={
                "namespace": namespace,
                "image_topic": f"{prefix}/image_raw",
                "compressed_image_topic": f"{prefix}/image_raw/compressed",
                "camera_info_topic": f"{prefix}/camera_info",
                "model_path": LaunchConfiguration("model_path"),
                "device": LaunchConfiguration("device"),
            }.items()))
    return LaunchDescription(entities)
