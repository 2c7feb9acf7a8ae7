"""Checking raw outputs: parse, repair (recorded), validate. Imports no tier or provider."""

from extract.validate.check import Checked, check, parse_output, validate_value

__all__ = ["Checked", "check", "parse_output", "validate_value"]
