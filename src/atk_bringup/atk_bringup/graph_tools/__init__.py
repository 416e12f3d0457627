"""The ROS graphs, declared once (graph), and what runs them: the launch files'
builder (launch_builder), atk-graph (runner) and ROS-graph episodes (ros_episode)."""
