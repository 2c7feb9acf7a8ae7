"""``python -m extract`` is the ``extract`` console script."""

from extract.cli import app

app()
