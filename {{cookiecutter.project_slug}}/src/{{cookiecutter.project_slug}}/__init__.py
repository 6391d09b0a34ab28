"""Tasks accepted over HTTP, processed from a message queue."""
