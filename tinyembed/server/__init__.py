"""HTTP in and out: the httptools server, routes, msgspec protocol, auth, rate limits, config."""
