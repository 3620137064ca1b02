"""The tag that marks the runs the main command submitted (the promotion sensor leaves their
evaluations alone: the main command promotes after them itself)."""

MAIN_COMMAND_TAG = "m2m/launched_by"
MAIN_COMMAND_VALUE = "main-command"
