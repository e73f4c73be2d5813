"""Soft Actor-Critic from pixels as pure functions: networks, losses, replay, augmentation, update.

Everything is a pytree plus pure functions so a whole training step can be jitted, scanned and
vmapped over seeds without host round trips.
"""
