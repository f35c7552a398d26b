"""Two cameras, one Groma node, one model: `ros2 launch groma_ros two_cameras.launch.py`.

Node /groma with parameter cameras: [front, wrist]. Each camera's relative topics (front/image,
front/image/compressed, front/camera_info, front/depth/image, front/depth/camera_info, and the same for wrist) are
remapped to its driver's topics under the `front_camera` / `wrist_camera` prefixes (RealSense-style names).
Queries: ~/query on the default (first) camera, front/query and wrist/query on one camera each.

Every argument of groma.launch.py (params_file, model_path, device, autostart, ...) passes through unchanged.
"""

from launch.actions import DeclareLaunchArgument, GroupAction, IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import SetRemap
from launch_ros.substitutions import FindPackageShare

from launch import LaunchDescription

CAMERAS = {"front": "/front_camera", "wrist": "/wrist_camera"}
# node-relative topic of a camera -> driver topic below the camera's prefix
TOPICS = {
    "image": "color/image_raw",
    "image/compressed": "color/image_raw/compressed",
    "camera_info": "color/camera_info",
    "depth/image": "aligned_depth_to_color/image_raw",
    "depth/camera_info": "aligned_depth_to_color/camera_info",
}


def generate_launch_description() -> LaunchDescription:
    groma = PathJoinSubstitution([FindPackageShare("groma_ros"), "launch", "groma.launch.py"])
    arguments = [DeclareLaunchArgument(f"{camera}_camera", default_value=prefix,
                                       description=f"Topic prefix of the {camera} camera's driver.")
                 for camera, prefix in CAMERAS.items()]
    remaps = [SetRemap(src=f"{camera}/{relative}", dst=[LaunchConfiguration(f"{camera}_camera"), "/", driver])
              for camera in CAMERAS for relative, driver in TOPICS.items()]
    node = IncludeLaunchDescription(PythonLaunchDescriptionSource(groma),
                                    launch_arguments={"cameras": f"[{', '.join(CAMERAS)}]"}.items())
    return LaunchDescription([*arguments, GroupAction([*remaps, node], scoped=True)])
