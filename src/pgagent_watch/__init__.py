"""pgagent-watch: live job status and alerting for pgAgent."""

__version__ = "0.1.0"
