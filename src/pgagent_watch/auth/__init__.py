"""Sign-in, sessions, CSRF and the users API."""
