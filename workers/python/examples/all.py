"""Both Python example workers in one process: ``echo`` and ``text.wordcount``.

Run: ``python -m taskgate_worker examples.all:worker`` (from workers/python).
"""

from __future__ import annotations

from taskgate_worker import Worker

from . import echo, wordcount

worker = Worker()
worker.handle("echo", echo.echo)
worker.handle("text.wordcount", wordcount.wordcount)
