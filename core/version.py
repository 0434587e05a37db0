"""Version of the pack and of the daemon protocol that clients and the daemon must share."""

__version__ = "0.1.0"
# Bumped whenever /v1 requests or answers change in a way an older peer would misread.
PROTOCOL = 1
