"""The front above the pipeline: batch runs, the benchmark, spec authoring (``extract check``)
and the command line. Nothing below imports it. This ``__init__`` imports nothing, so
``import extract`` does not load the CLI.
"""
