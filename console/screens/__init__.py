"""The console's screens: queues (home), instances, one instance, and the dialogs."""
