"""What the tests share: real components to run against (an SMTP server, processes, a
browser), rows to start from, and what a reader or an admin does. Fixtures that build them
per test live in conftest.py; test modules import these helpers from here, never from
conftest.py or from each other."""
