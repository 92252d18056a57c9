"""The in-process system (demo, record) claims a private domain no other node uses."""
import rclpy

from mbrl_ros.ros.compose import _claim_free_domain


def test_claims_a_domain_without_foreign_nodes(monkeypatch):
    monkeypatch.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    busy_domain, free_domain = 63, 64
    other = rclpy.Context()
    rclpy.init(context=other, domain_id=busy_domain)
    node = rclpy.create_node("someone_elses_sim", context=other)
    try:
        for _ in range(3):                 # the busy domain is skipped whatever the order
            context, domain = _claim_free_domain([busy_domain, free_domain], listen=3.0)
            rclpy.try_shutdown(context=context)
            assert domain == free_domain
    finally:
        node.destroy_node()
        rclpy.try_shutdown(context=other)
