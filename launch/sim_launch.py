"""Launch the whole genpolicy_ros stack on the PyBullet simulation.

    ros2 launch genpolicy_ros sim_launch.py [gui:=true] [policy:=flow|expert]
        [operator_view:=true] [record:=/path/run.mcap]

Graph: sim_node (/joint_states, camera) -> policy_node (/genpolicy/action_chunk, samples)
-> safety_filter_node (/genpolicy/safe_command) -> monitor_node (/genpolicy/arm_command)
-> sim_node. Every parameter comes from config/*.yaml; the arguments above override a few.
``genpolicy-sim`` starts the same executables with the same YAML files, one process each. Another
checkpoint: add ``checkpoint:=...`` as a ROS parameter override of policy_node.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration, PythonExpression
from launch_ros.actions import Node


def generate_launch_description() -> LaunchDescription:
    """Describe the simulated stack."""
    share = get_package_share_directory('genpolicy_ros')

    def cfg(name: str) -> str:
        return os.path.join(share, 'config', name)

    gui = LaunchConfiguration('gui')
    policy = LaunchConfiguration('policy')
    operator_view = LaunchConfiguration('operator_view')
    record = LaunchConfiguration('record')
    return LaunchDescription([
        DeclareLaunchArgument('gui', default_value='false',
                              description='open the PyBullet GUI window'),
        DeclareLaunchArgument('policy', default_value='flow', choices=['flow', 'expert'],
                              description='flow (the trained policy) or expert (scripted)'),
        DeclareLaunchArgument('operator_view', default_value='false',
                              description='open the rqt operator view'),
        DeclareLaunchArgument('record', default_value='',
                              description='MCAP file to record every genpolicy topic to'),
        Node(package='genpolicy_ros', executable='sim_node', name='sim_node', output='screen',
             parameters=[cfg('sim.yaml'), {'gui': gui}]),
        Node(package='genpolicy_ros', executable='policy_node', name='policy_node',
             output='screen',
             parameters=[cfg('policy.yaml'), {'node.policy_type': policy}]),
        Node(package='genpolicy_ros', executable='safety_filter_node', name='safety_filter_node',
             output='screen', parameters=[cfg('safety.yaml')]),
        Node(package='genpolicy_ros', executable='monitor_node', name='monitor_node',
             output='screen', parameters=[cfg('monitor.yaml')]),
        Node(package='genpolicy_ros', executable='genpolicy-record', name='mcap_recorder',
             output='screen', arguments=[record],
             condition=IfCondition(PythonExpression(["'", record, "' != ''"]))),
        ExecuteProcess(cmd=['rqt', '--standalone', 'GenpolicyMonitor'],
                       condition=IfCondition(operator_view), output='screen'),
    ])
