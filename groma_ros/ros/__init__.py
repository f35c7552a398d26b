"""ROS-message-level helpers (image conversion, depth lifting, RViz markers) used by the node."""
