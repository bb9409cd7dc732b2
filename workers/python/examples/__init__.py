"""Example workers for taskgate's example plugins, written with the SDK as a worker author
would: ``python -m taskgate_worker examples.wordcount:worker`` (from workers/python)."""
