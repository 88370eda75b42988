"""Pure logic: no processes, no sockets. Runs in seconds."""
