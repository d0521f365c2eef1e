"""Rollout experiments: plans read from --rollout_config_file, their live state, the router
that applies them to requests, and the shadow runner."""
