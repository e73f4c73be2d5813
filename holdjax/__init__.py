"""holdjax: HOLD policy training in pure JAX."""
