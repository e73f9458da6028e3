"""The control socket: the storage proxy's JSON API over HTTP/1.1 on a Unix socket."""
