"""The UR5e + Robotiq driver: its node and parameters, the servo loop, the safety
rules, and the hardware boundary (ur_interface) with its stand-in for tests."""
