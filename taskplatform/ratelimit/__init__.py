"""Rate limits: executables' declared limits in workers, submissions per user in the API."""
