"""A real S3 server for the tests: versitygw (posix backend), built from its Go module."""
