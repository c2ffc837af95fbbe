"""Background jobs any front end can follow: evented job state, and the training process a
GUI starts (the ``gvsl`` CLI in a child process that stops with its parent).
"""
