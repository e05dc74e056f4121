"""Quality-of-service profiles the nodes share."""

from rclpy.qos import QoSProfile, qos_profile_sensor_data

# Camera frames for consumers that only ever use the newest one (the policy, the monitor):
# sensor-data QoS (best effort, matches any camera driver) with a queue of one. With the
# sensor-data default of five, a process that fell behind works through up to five frames
# that are already old (at 5 Hz, a second) before it reaches the newest.
NEWEST_FRAME_QOS = QoSProfile(depth=1, history=qos_profile_sensor_data.history,
                              reliability=qos_profile_sensor_data.reliability,
                              durability=qos_profile_sensor_data.durability)
