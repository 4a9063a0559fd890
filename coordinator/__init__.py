"""Model frontend, jobs, the tuning loop, the compile path and the command line."""
