"""Launch the whole genpolicy_ros stack on a real Franka (FR3 or Panda).

    ros2 launch genpolicy_ros real_launch.py robot_ip:=<FCI address>
        [realtime_config:=enforce|ignore] [control_mode:=position|velocity]
        [camera:=opencv|external] [video_device:=/dev/video0]
        [camera_image_topic:=... camera_info_topic:=...]
        [operator_view:=true] [record:=/path/run.mcap]

Graph: driver_node (backend franka: /joint_states, ~/ee_pose, ~/robot_mode) + camera
(camera_node on a V4L2 device, or an external driver) -> policy_node -> safety_filter_node ->
monitor_node (/genpolicy/arm_command) -> driver_node. Every parameter comes from
config/*.yaml; the arguments above override a few. With ``camera:=external`` no camera node is
started and the policy and monitor read ``camera_image_topic`` / ``camera_info_topic`` (e.g.
realsense2_camera's ``/camera/camera/color/image_raw``).

Before the first run read the README's "Real robot" section: FCI enabled in Desk, a real-time
kernel (or ``realtime_config:=ignore``, for simulation only), the user stop in reach, and the
safety filter's speed cap at reduced speed. Against the franka-sim simulator:
``genpolicy-franka-sim`` then ``robot_ip:=127.0.0.1 realtime_config:=ignore``.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration, PythonExpression
from launch_ros.actions import Node


def generate_launch_description() -> LaunchDescription:
    """Describe the stack on the real arm."""
    share = get_package_share_directory('genpolicy_ros')

    def cfg(name: str) -> str:
        return os.path.join(share, 'config', name)

    robot_ip = LaunchConfiguration('robot_ip')
    realtime_config = LaunchConfiguration('realtime_config')
    control_mode = LaunchConfiguration('control_mode')
    camera = LaunchConfiguration('camera')
    video_device = LaunchConfiguration('video_device')
    image_topic = LaunchConfiguration('camera_image_topic')
    info_topic = LaunchConfiguration('camera_info_topic')
    operator_view = LaunchConfiguration('operator_view')
    record = LaunchConfiguration('record')
    # The policy and the monitor read the camera; remapped when another driver publishes it.
    camera_remaps = [('/camera/color/image_raw', image_topic),
                     ('/camera/color/camera_info', info_topic)]
    return LaunchDescription([
        DeclareLaunchArgument('robot_ip', description='FCI address of the arm (required)'),
        DeclareLaunchArgument('realtime_config', default_value='enforce',
                              choices=['enforce', 'ignore'],
                              description='libfranka real-time mode: enforce on a real robot '
                                          '(RT kernel), ignore for the franka-sim simulator'),
        DeclareLaunchArgument('control_mode', default_value='position',
                              choices=['position', 'velocity'],
                              description='FCI joint motion generator the driver uses'),
        DeclareLaunchArgument('camera', default_value='opencv', choices=['opencv', 'external'],
                              description='opencv: start camera_node on video_device; '
                                          'external: use another driver\'s topics'),
        DeclareLaunchArgument('video_device', default_value='/dev/video0',
                              description='V4L2 device of camera_node'),
        DeclareLaunchArgument('camera_image_topic', default_value='/camera/color/image_raw',
                              description='image topic the policy reads (camera:=external)'),
        DeclareLaunchArgument('camera_info_topic', default_value='/camera/color/camera_info',
                              description='camera_info topic (camera:=external)'),
        DeclareLaunchArgument('operator_view', default_value='false',
                              description='open the rqt operator view'),
        DeclareLaunchArgument('record', default_value='',
                              description='MCAP file to record every genpolicy topic to'),
        Node(package='genpolicy_ros', executable='driver_node', name='driver_node',
             output='screen',
             parameters=[cfg('driver.yaml'), {
                 'backend': 'franka',
                 'franka.robot_ip': robot_ip,
                 'franka.realtime_config': realtime_config,
                 'franka.control_mode': control_mode}]),
        Node(package='genpolicy_ros', executable='camera_node', name='camera_node',
             output='screen', parameters=[cfg('camera.yaml'), {'device': video_device}],
             condition=IfCondition(PythonExpression(["'", camera, "' == 'opencv'"]))),
        Node(package='genpolicy_ros', executable='policy_node', name='policy_node',
             output='screen', parameters=[cfg('policy.yaml')], remappings=camera_remaps),
        Node(package='genpolicy_ros', executable='safety_filter_node', name='safety_filter_node',
             output='screen', parameters=[cfg('safety.yaml')]),
        Node(package='genpolicy_ros', executable='monitor_node', name='monitor_node',
             output='screen', parameters=[cfg('monitor.yaml')], remappings=camera_remaps),
        Node(package='genpolicy_ros', executable='genpolicy-record', name='mcap_recorder',
             output='screen', arguments=[record],
             condition=IfCondition(PythonExpression(["'", record, "' != ''"]))),
        ExecuteProcess(cmd=['rqt', '--standalone', 'GenpolicyMonitor'],
                       condition=IfCondition(operator_view), output='screen'),
    ])
