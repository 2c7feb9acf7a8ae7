"""``python -m extract`` is the ``extract`` console script."""

from extract.front.cli import app

app()
