"""Example schemas users can import (``schemas.address:Address``) and the benchmark uses."""
