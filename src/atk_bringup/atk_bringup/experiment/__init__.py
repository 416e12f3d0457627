"""The experiment behind atk-demo: demonstrations, training and DAgger (demo),
the in-process evaluation, and the selection figure."""
