"""The tasks' goal images (``<name>.npy``, with a PNG for people): data, in a package of its
own so that a plain ``pip install .`` ships them beside holdjax (`holdjax.envs.goal_images`
reads and writes them)."""
