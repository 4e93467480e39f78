"""What users and operators do: the job operations (submit, retry, cancel, show, logs) and
an operator's controls (pause, quarantine, search, schedules), on this machine's store
(``LocalJobs``) or through a dispatcher's HTTP API (``RemoteJobs``, client.py), so that the
command line and the API always agree.

May import: dispatch and every layer below it (tests/unit/test_architecture.py)."""
