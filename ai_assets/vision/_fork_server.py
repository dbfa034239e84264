"""Preloaded by the decode workers' fork server only, never imported elsewhere: the server ignores
SIGINT and SIGTERM, so each worker does from its fork on, with no window before its loop starts.

A signal to the whole process group (Ctrl-C in a terminal, a group's SIGTERM) must not kill a
worker under a run that goes on: the run's process stops its workers, and the server ends with
the run's process (its end closes the server's pipe; see ``multiprocessing.forkserver``).
"""

import signal

signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
